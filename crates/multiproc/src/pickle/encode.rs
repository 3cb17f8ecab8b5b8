//! The encoder: a [`Value`] to protocol-4 pickle bytes that CPython 3.4+ reads.
//!
//! What the reference (`cpython-manager-protocol.md` §5.4) recommends: header `80 04`, no
//! `FRAME`, no memo (a `Value` tree shares nothing), the shortest opcode for each int, string
//! and tuple, lists/dicts/sets filled in batches of 1000 like CPython, `bytearray` as
//! `REDUCE(builtins.bytearray, (bytes,))` (protocol 5's `BYTEARRAY8` is unknown before 3.8),
//! globals with `GLOBAL` (or `STACK_GLOBAL` when a name contains a newline). It does not
//! recurse, so any depth of `Value` encodes.

use super::error::PickleError;
use super::opcodes::*;
use super::value::{Object, ObjectKind, Value, i64_le_bytes};

/// Items per `APPENDS`/`SETITEMS`/`ADDITEMS` batch, as CPython writes them.
const BATCH: usize = 1000;

/// The protocol the encoder announces.
pub(crate) const PROTOCOL: u8 = 4;

/// Encodes `value` as one pickle.
///
/// # Errors
/// [`PickleError::Unpicklable`] only for an int of 2 GiB or more.
pub(crate) fn encode(value: &Value) -> Result<Vec<u8>, PickleError> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Appends the pickle of `value` to `out`.
///
/// # Errors
/// As [`encode()`]; `out` then holds a partial pickle.
pub(crate) fn encode_into(value: &Value, out: &mut Vec<u8>) -> Result<(), PickleError> {
    out.extend_from_slice(&[PROTO, PROTOCOL]);
    let mut tasks = vec![Task::Value(value)];
    while let Some(task) = tasks.pop() {
        let at = tasks.len();
        match task {
            Task::Op(op) => out.push(op),
            Task::Value(v) => value_op(v, out, &mut tasks)?,
            Task::Tuple(items) => match items.len() {
                0 => out.push(EMPTY_TUPLE),
                n @ 1..=3 => {
                    tasks.extend(items.iter().map(Task::Value));
                    tasks.push(Task::Op(TUPLE1 + (n as u8 - 1)));
                }
                _ => {
                    tasks.push(Task::Op(MARK));
                    tasks.extend(items.iter().map(Task::Value));
                    tasks.push(Task::Op(TUPLE));
                }
            },
            Task::Appends(items) => match items {
                [] => {}
                [one] => {
                    tasks.push(Task::Value(one));
                    tasks.push(Task::Op(APPEND));
                }
                _ => {
                    for chunk in items.chunks(BATCH) {
                        tasks.push(Task::Op(MARK));
                        tasks.extend(chunk.iter().map(Task::Value));
                        tasks.push(Task::Op(APPENDS));
                    }
                }
            },
            Task::SetItems(pairs) => match pairs {
                [] => {}
                [(k, v)] => {
                    tasks.extend([Task::Value(k), Task::Value(v), Task::Op(SETITEM)]);
                }
                _ => {
                    for chunk in pairs.chunks(BATCH) {
                        tasks.push(Task::Op(MARK));
                        for (k, v) in chunk {
                            tasks.extend([Task::Value(k), Task::Value(v)]);
                        }
                        tasks.push(Task::Op(SETITEMS));
                    }
                }
            },
            Task::AddItems(items) => {
                for chunk in items.chunks(BATCH) {
                    tasks.push(Task::Op(MARK));
                    tasks.extend(chunk.iter().map(Task::Value));
                    tasks.push(Task::Op(ADDITEMS));
                }
            }
        }
        // Tasks were pushed in writing order; the stack pops the last first.
        tasks[at..].reverse();
    }
    out.push(STOP);
    Ok(())
}

/// Work left to do, popped last-in first-out.
enum Task<'a> {
    Value(&'a Value),
    Op(u8),
    Tuple(&'a [Value]),
    Appends(&'a [Value]),
    SetItems(&'a [(Value, Value)]),
    AddItems(&'a [Value]),
}

/// Writes a scalar directly, or schedules the parts of a container (in writing order).
fn value_op<'a>(
    v: &'a Value,
    out: &mut Vec<u8>,
    tasks: &mut Vec<Task<'a>>,
) -> Result<(), PickleError> {
    match v {
        Value::None => out.push(NONE),
        Value::Bool(true) => out.push(NEWTRUE),
        Value::Bool(false) => out.push(NEWFALSE),
        Value::Int(i) => int(*i, out),
        Value::BigInt(b) => long(b.to_le_bytes(), out)?,
        Value::Float(x) => {
            out.push(BINFLOAT);
            out.extend_from_slice(&x.to_be_bytes());
        }
        Value::Str(s) => {
            sized(
                s.as_bytes(),
                [SHORT_BINUNICODE, BINUNICODE, BINUNICODE8],
                out,
            );
        }
        Value::Bytes(b) => sized(b, [SHORT_BINBYTES, BINBYTES, BINBYTES8], out),
        Value::ByteArray(b) => {
            global("builtins", "bytearray", out);
            sized(b, [SHORT_BINBYTES, BINBYTES, BINBYTES8], out);
            out.extend_from_slice(&[TUPLE1, REDUCE]);
        }
        Value::Tuple(items) => tasks.push(Task::Tuple(items)),
        Value::List(items) => {
            out.push(EMPTY_LIST);
            tasks.push(Task::Appends(items));
        }
        Value::Dict(pairs) => {
            out.push(EMPTY_DICT);
            tasks.push(Task::SetItems(pairs));
        }
        Value::Set(items) => {
            out.push(EMPTY_SET);
            tasks.push(Task::AddItems(items));
        }
        Value::FrozenSet(items) => {
            out.push(MARK);
            tasks.extend(items.iter().map(Task::Value));
            tasks.push(Task::Op(FROZENSET));
        }
        Value::Global { module, name } => global(module, name, out),
        Value::Object(o) => object(o, tasks),
    }
    Ok(())
}

fn object<'a>(o: &'a Object, tasks: &mut Vec<Task<'a>>) {
    tasks.push(Task::Value(&o.callable));
    tasks.push(Task::Tuple(&o.args));
    match &o.kind {
        ObjectKind::Reduce => tasks.push(Task::Op(REDUCE)),
        ObjectKind::NewObj => tasks.push(Task::Op(NEWOBJ)),
        ObjectKind::NewObjEx { kwargs } => {
            tasks.push(Task::Op(EMPTY_DICT));
            tasks.push(Task::SetItems(kwargs));
            tasks.push(Task::Op(NEWOBJ_EX));
        }
    }
    tasks.push(Task::Appends(&o.list_items));
    tasks.push(Task::SetItems(&o.dict_items));
    if let Some(state) = &o.state {
        tasks.push(Task::Value(state));
        tasks.push(Task::Op(BUILD));
    }
}

fn int(i: i64, out: &mut Vec<u8>) {
    match i {
        0..=0xff => out.extend_from_slice(&[BININT1, i as u8]),
        0x100..=0xffff => {
            out.push(BININT2);
            out.extend_from_slice(&(i as u16).to_le_bytes());
        }
        _ => match i32::try_from(i) {
            Ok(i) => {
                out.push(BININT);
                out.extend_from_slice(&i.to_le_bytes());
            }
            Err(_) => {
                let bytes = i64_le_bytes(i);
                out.extend_from_slice(&[LONG1, bytes.len() as u8]);
                out.extend_from_slice(&bytes);
            }
        },
    }
}

fn long(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), PickleError> {
    if let Ok(n) = u8::try_from(bytes.len()) {
        out.extend_from_slice(&[LONG1, n]);
    } else {
        let n = i32::try_from(bytes.len())
            .map_err(|_| PickleError::Unpicklable("int of 2 GiB or more".into()))?;
        out.push(LONG4);
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(bytes);
    Ok(())
}

/// A length-prefixed payload with the 1-, 4- or 8-byte length opcode.
fn sized(data: &[u8], [op1, op4, op8]: [u8; 3], out: &mut Vec<u8>) {
    if let Ok(n) = u8::try_from(data.len()) {
        out.extend_from_slice(&[op1, n]);
    } else if let Ok(n) = u32::try_from(data.len()) {
        out.push(op4);
        out.extend_from_slice(&n.to_le_bytes());
    } else {
        out.push(op8);
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    }
    out.extend_from_slice(data);
}

fn global(module: &str, name: &str, out: &mut Vec<u8>) {
    if module.contains('\n') || name.contains('\n') {
        sized(
            module.as_bytes(),
            [SHORT_BINUNICODE, BINUNICODE, BINUNICODE8],
            out,
        );
        sized(
            name.as_bytes(),
            [SHORT_BINUNICODE, BINUNICODE, BINUNICODE8],
            out,
        );
        out.push(STACK_GLOBAL);
    } else {
        out.push(GLOBAL);
        for part in [module, name] {
            out.extend_from_slice(part.as_bytes());
            out.push(b'\n');
        }
    }
}
