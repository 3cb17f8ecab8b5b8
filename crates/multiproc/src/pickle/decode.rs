//! The decoder: pickle bytes (protocols 0–5) to a [`Value`], for untrusted input.
//!
//! # How it works
//! Opcodes run on a stack machine like CPython's, but nothing is called: globals become
//! [`Value::Global`], `REDUCE`/`NEWOBJ` become [`Object`]s. Values that can be shared through
//! the memo and mutated afterwards (`EMPTY_LIST MEMOIZE … APPENDS`, `BUILD` on a memoized
//! object) live in an arena of [`Node`]s; the stack, the memo and containers hold [`Entry`]s
//! (small scalars inline, everything else an arena index), so a mutation through one reference
//! is seen through all of them. At `STOP` the arena is turned into a [`Value`] tree without
//! recursion; a shared node is copied once per reference, and a node that contains itself is an
//! error.
//!
//! # Bounds
//! Every length is checked against the bytes left before anything is allocated, so memory
//! grows only with data actually present. [`Limits`] bounds the rest: input size, nesting (open
//! marks while decoding, depth of the result), memo size, container length, int size, and an
//! overall memory budget that counts the stack, the arena and the result — a shared reference is
//! charged each time it is copied, which stops "memo bombs" (a few bytes that reference a
//! structure 2^100 times).

use std::collections::HashMap;
use std::mem::size_of;

use super::error::PickleError;
use super::opcodes::*;
use super::value::{BigInt, Object, ObjectKind, Value, parse_decimal};

/// Bounds on what a decoder accepts; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Longest input accepted, in bytes (default 64 MiB: the manager's frame bound).
    pub(crate) max_input_len: usize,
    /// Deepest nesting of containers in the result, and most marks open at once (default 256).
    pub(crate) max_depth: usize,
    /// Largest memo index (and so the most memo entries) (default 2^20).
    pub(crate) max_memo_len: usize,
    /// Most items in one tuple, list, dict, set or object (default 2^24).
    pub(crate) max_container_len: usize,
    /// Longest int, in bytes (default 64 KiB; decimal ints of protocol 0 are capped at 4300
    /// digits, like CPython's `int()`).
    pub(crate) max_int_bytes: usize,
    /// Budget, in bytes, for the decoder's stack, arena and result together (default 512 MiB).
    pub(crate) max_memory: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_input_len: 64 << 20,
            max_depth: 256,
            max_memo_len: 1 << 20,
            max_container_len: 1 << 24,
            max_int_bytes: 64 << 10,
            max_memory: 512 << 20,
        }
    }
}

/// Decodes one pickle with the default [`Limits`].
///
/// # Errors
/// [`PickleError`] if the bytes are not exactly one pickle this decoder reads, or exceed a limit.
pub(crate) fn decode(data: &[u8]) -> Result<Value, PickleError> {
    decode_with(data, &Limits::default())
}

/// Decodes one pickle (and nothing after its `STOP`).
///
/// # Errors
/// [`PickleError`] if the bytes are not exactly one pickle this decoder reads, or exceed
/// `limits`.
pub(crate) fn decode_with(data: &[u8], limits: &Limits) -> Result<Value, PickleError> {
    if data.len() > limits.max_input_len {
        return Err(PickleError::LimitExceeded {
            limit: "input length",
            max: limits.max_input_len,
            offset: 0,
        });
    }
    Decoder {
        data,
        pos: 0,
        op_start: 0,
        limits,
        protocol: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        nodes: Vec::new(),
        memory: 0,
    }
    .run()
}

/// A stack slot: a scalar, or an index into the arena.
#[derive(Clone, Copy, Debug)]
enum Entry {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Node(usize),
}

/// An arena value: anything that is not a scalar.
#[derive(Debug)]
enum Node {
    BigInt(BigInt),
    Str(String),
    Bytes(Vec<u8>),
    ByteArray(Vec<u8>),
    Tuple(Vec<Entry>),
    List(Vec<Entry>),
    Dict(Vec<(Entry, Entry)>),
    Set(Vec<Entry>),
    FrozenSet(Vec<Entry>),
    Global { module: String, name: String },
    Object(Box<ObjectNode>),
}

#[derive(Debug)]
struct ObjectNode {
    callable: Entry,
    /// The arena index of the argument tuple.
    args: usize,
    /// `NEWOBJ_EX`: the arena index of the keyword-argument dict.
    kwargs: Option<usize>,
    newobj: bool,
    list_items: Vec<Entry>,
    dict_items: Vec<(Entry, Entry)>,
    state: Option<Entry>,
}

impl Node {
    fn type_name(&self) -> &'static str {
        match self {
            Node::BigInt(_) => "int",
            Node::Str(_) => "str",
            Node::Bytes(_) => "bytes",
            Node::ByteArray(_) => "bytearray",
            Node::Tuple(_) => "tuple",
            Node::List(_) => "list",
            Node::Dict(_) => "dict",
            Node::Set(_) => "set",
            Node::FrozenSet(_) => "frozenset",
            Node::Global { .. } => "global",
            Node::Object(_) => "object",
        }
    }
}

struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being run, for errors.
    op_start: usize,
    limits: &'a Limits,
    protocol: u8,
    stack: Vec<Entry>,
    /// Stack lengths at each open `MARK` (as CPython keeps them).
    marks: Vec<usize>,
    memo: HashMap<u32, Entry>,
    nodes: Vec<Node>,
    /// Bytes charged against `limits.max_memory`.
    memory: usize,
}

type Result<T, E = PickleError> = std::result::Result<T, E>;

impl<'a> Decoder<'a> {
    fn run(mut self) -> Result<Value> {
        loop {
            self.op_start = self.pos;
            let op = self.u8("opcode")?;
            match op {
                PROTO => {
                    let protocol = self.u8("PROTO argument")?;
                    if protocol > 5 {
                        return Err(PickleError::UnsupportedProtocol { protocol });
                    }
                    self.protocol = protocol;
                }
                FRAME => {
                    let n = self.u64("FRAME length")?;
                    if n > (self.data.len() - self.pos) as u64 {
                        return Err(self.invalid("FRAME longer than the rest of the pickle"));
                    }
                }
                STOP => return self.stop(),
                MARK => {
                    if self.marks.len() >= self.limits.max_depth {
                        return Err(self.limit("nesting depth", self.limits.max_depth));
                    }
                    self.charge(size_of::<usize>())?;
                    self.marks.push(self.stack.len());
                }
                POP => {
                    if self.marks.last() == Some(&self.stack.len()) {
                        self.marks.pop();
                    } else {
                        self.pop()?;
                    }
                }
                POP_MARK => {
                    self.pop_mark()?;
                }
                DUP => {
                    let e = self.top()?;
                    self.push(e)?;
                }
                MEMOIZE => {
                    let index = u32::try_from(self.memo.len()).unwrap_or(u32::MAX);
                    self.memo_put(index)?;
                }
                BINPUT => {
                    let index = self.u8("BINPUT index")?;
                    self.memo_put(u32::from(index))?;
                }
                LONG_BINPUT => {
                    let index = self.u32("LONG_BINPUT index")?;
                    self.memo_put(index)?;
                }
                PUT => {
                    let index = self.line_index("PUT index")?;
                    self.memo_put(index)?;
                }
                BINGET => {
                    let index = self.u8("BINGET index")?;
                    self.memo_get(u32::from(index))?;
                }
                LONG_BINGET => {
                    let index = self.u32("LONG_BINGET index")?;
                    self.memo_get(index)?;
                }
                GET => {
                    let index = self.line_index("GET index")?;
                    self.memo_get(index)?;
                }
                NONE => self.push(Entry::None)?,
                NEWTRUE => self.push(Entry::Bool(true))?,
                NEWFALSE => self.push(Entry::Bool(false))?,
                BININT1 => {
                    let v = self.u8("BININT1 argument")?;
                    self.push(Entry::Int(i64::from(v)))?;
                }
                BININT2 => {
                    let v = u16::from_le_bytes(self.array("BININT2 argument")?);
                    self.push(Entry::Int(i64::from(v)))?;
                }
                BININT => {
                    let v = i32::from_le_bytes(self.array("BININT argument")?);
                    self.push(Entry::Int(i64::from(v)))?;
                }
                LONG1 => {
                    let n = self.u8("LONG1 length")?;
                    self.long(usize::from(n))?;
                }
                LONG4 => {
                    let n = i32::from_le_bytes(self.array("LONG4 length")?);
                    let n = usize::try_from(n)
                        .map_err(|_| self.invalid("LONG4 with a negative length"))?;
                    self.long(n)?;
                }
                INT => {
                    let line = self.line("INT argument")?;
                    match line {
                        b"01" => self.push(Entry::Bool(true))?,
                        b"00" => self.push(Entry::Bool(false))?,
                        _ => self.decimal(line)?,
                    }
                }
                LONG => {
                    let line = self.line("LONG argument")?;
                    let line = line.strip_suffix(b"L").unwrap_or(line);
                    self.decimal(line)?;
                }
                FLOAT => {
                    let line = self.line("FLOAT argument")?;
                    let v = std::str::from_utf8(line)
                        .ok()
                        .and_then(|s| s.trim().parse::<f64>().ok())
                        .ok_or_else(|| self.invalid("FLOAT argument is not a number"))?;
                    self.push(Entry::Float(v))?;
                }
                BINFLOAT => {
                    let v = f64::from_be_bytes(self.array("BINFLOAT argument")?);
                    self.push(Entry::Float(v))?;
                }
                SHORT_BINUNICODE => {
                    let n = usize::from(self.u8("SHORT_BINUNICODE length")?);
                    self.unicode(n)?;
                }
                BINUNICODE => {
                    let n = self.u32("BINUNICODE length")? as usize;
                    self.unicode(n)?;
                }
                BINUNICODE8 => {
                    let n = self.len64("BINUNICODE8 length")?;
                    self.unicode(n)?;
                }
                UNICODE => {
                    let line = self.line("UNICODE argument")?;
                    let s = raw_unicode_escape(line)
                        .ok_or_else(|| self.invalid("UNICODE argument: bad escape"))?;
                    let len = s.len();
                    self.push_node(Node::Str(s), len)?;
                }
                SHORT_BINBYTES => {
                    let n = usize::from(self.u8("SHORT_BINBYTES length")?);
                    let b = self.take(n, "SHORT_BINBYTES data")?.to_vec();
                    self.push_node(Node::Bytes(b), n)?;
                }
                BINBYTES => {
                    let n = self.u32("BINBYTES length")? as usize;
                    let b = self.take(n, "BINBYTES data")?.to_vec();
                    self.push_node(Node::Bytes(b), n)?;
                }
                BINBYTES8 => {
                    let n = self.len64("BINBYTES8 length")?;
                    let b = self.take(n, "BINBYTES8 data")?.to_vec();
                    self.push_node(Node::Bytes(b), n)?;
                }
                BYTEARRAY8 => {
                    let n = self.len64("BYTEARRAY8 length")?;
                    let b = self.take(n, "BYTEARRAY8 data")?.to_vec();
                    self.push_node(Node::ByteArray(b), n)?;
                }
                EMPTY_TUPLE => self.push_node(Node::Tuple(Vec::new()), 0)?,
                TUPLE1 | TUPLE2 | TUPLE3 => {
                    let n = usize::from(op - TUPLE1 + 1);
                    let fence = self.fence();
                    if self.stack.len() < fence + n {
                        return Err(self.underflow());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_node(Node::Tuple(items), 0)?;
                }
                TUPLE => {
                    let items = self.pop_mark()?;
                    self.check_len(items.len())?;
                    self.push_node(Node::Tuple(items), 0)?;
                }
                EMPTY_LIST => self.push_node(Node::List(Vec::new()), 0)?,
                LIST => {
                    let items = self.pop_mark()?;
                    self.check_len(items.len())?;
                    self.push_node(Node::List(items), 0)?;
                }
                APPEND => {
                    let v = self.pop()?;
                    self.extend_list("APPEND", vec![v])?;
                }
                APPENDS => {
                    let items = self.pop_mark()?;
                    self.extend_list("APPENDS", items)?;
                }
                EMPTY_DICT => self.push_node(Node::Dict(Vec::new()), 0)?,
                DICT => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.check_len(pairs.len())?;
                    self.push_node(Node::Dict(pairs), 0)?;
                }
                SETITEM => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_dict("SETITEM", vec![(k, v)])?;
                }
                SETITEMS => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.extend_dict("SETITEMS", pairs)?;
                }
                EMPTY_SET => self.push_node(Node::Set(Vec::new()), 0)?,
                ADDITEMS => {
                    let items = self.pop_mark()?;
                    let target = self.top()?;
                    let max = self.limits.max_container_len;
                    match self.node_mut(target) {
                        Some(Node::Set(set)) if set.len().saturating_add(items.len()) <= max => {
                            set.extend(items)
                        }
                        Some(Node::Set(_)) => return Err(self.limit("container length", max)),
                        other => {
                            let what = other.map_or("scalar", |n| n.type_name());
                            return Err(self.invalid(format!("ADDITEMS on a {what}")));
                        }
                    }
                }
                FROZENSET => {
                    let items = self.pop_mark()?;
                    self.check_len(items.len())?;
                    self.push_node(Node::FrozenSet(items), 0)?;
                }
                GLOBAL => {
                    let module = self.line("GLOBAL module")?;
                    let name = self.line("GLOBAL name")?;
                    let (module, name) =
                        match (std::str::from_utf8(module), std::str::from_utf8(name)) {
                            (Ok(m), Ok(n)) => (m, n),
                            _ => return Err(self.invalid("GLOBAL name is not UTF-8")),
                        };
                    self.global(module.to_owned(), name.to_owned())?;
                }
                STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (self.str_of(module), self.str_of(name)) {
                        (Some(m), Some(n)) => {
                            let (m, n) = (m.to_owned(), n.to_owned());
                            self.global(m, n)?;
                        }
                        _ => return Err(self.invalid("STACK_GLOBAL needs two str")),
                    }
                }
                REDUCE => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let args = self.tuple_id(args, "REDUCE")?;
                    match self.normalize(callable, args)? {
                        Some(node) => self.push_node(node, 0)?,
                        None => self.push_object(callable, args, None, false)?,
                    }
                }
                NEWOBJ => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let args = self.tuple_id(args, "NEWOBJ")?;
                    self.push_object(cls, args, None, true)?;
                }
                NEWOBJ_EX => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let args = self.tuple_id(args, "NEWOBJ_EX")?;
                    let kwargs = match kwargs {
                        Entry::Node(id) if matches!(self.nodes[id], Node::Dict(_)) => id,
                        _ => return Err(self.invalid("NEWOBJ_EX keyword arguments are not a dict")),
                    };
                    self.push_object(cls, args, Some(kwargs), true)?;
                }
                BUILD => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    let offset = self.op_start;
                    match self.node_mut(target) {
                        Some(Node::Object(o)) if o.state.is_none() => o.state = Some(state),
                        Some(Node::Object(_)) => {
                            return Err(PickleError::invalid(offset, "BUILD applied twice"));
                        }
                        other => {
                            let what = other.map_or("scalar", |n| n.type_name());
                            return Err(PickleError::invalid(offset, format!("BUILD on a {what}")));
                        }
                    }
                }
                _ => {
                    return Err(PickleError::UnsupportedOpcode {
                        opcode: op,
                        offset: self.op_start,
                    });
                }
            }
        }
    }

    // ----- errors and accounting -----

    fn invalid(&self, detail: impl Into<String>) -> PickleError {
        PickleError::invalid(self.op_start, detail)
    }

    fn underflow(&self) -> PickleError {
        self.invalid("stack underflow")
    }

    fn limit(&self, limit: &'static str, max: usize) -> PickleError {
        PickleError::LimitExceeded {
            limit,
            max,
            offset: self.op_start,
        }
    }

    fn charge(&mut self, bytes: usize) -> Result<()> {
        self.memory = self.memory.saturating_add(bytes);
        if self.memory > self.limits.max_memory {
            return Err(self.limit("memory", self.limits.max_memory));
        }
        Ok(())
    }

    fn check_len(&self, len: usize) -> Result<()> {
        if len > self.limits.max_container_len {
            return Err(self.limit("container length", self.limits.max_container_len));
        }
        Ok(())
    }

    // ----- reading arguments -----

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        if n > self.data.len() - self.pos {
            return Err(PickleError::Truncated {
                what,
                offset: self.pos,
            });
        }
        let bytes = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A 64-bit length, which must fit in the bytes left (checked again by `take`).
    fn len64(&mut self, what: &'static str) -> Result<usize> {
        let offset = self.pos;
        let n = self.u64(what)?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.data.len() - self.pos)
            .ok_or(PickleError::Truncated { what, offset })
    }

    /// Bytes up to the next `\n` (which is consumed, not returned).
    fn line(&mut self, what: &'static str) -> Result<&'a [u8]> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(PickleError::Truncated {
                what,
                offset: self.pos,
            });
        };
        self.pos += end + 1;
        Ok(&rest[..end])
    }

    fn line_index(&mut self, what: &'static str) -> Result<u32> {
        let line = self.line(what)?;
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| self.invalid(format!("{what} is not a number")))
    }

    // ----- the stack -----

    fn fence(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn push(&mut self, e: Entry) -> Result<()> {
        self.charge(size_of::<Entry>())?;
        self.stack.push(e);
        Ok(())
    }

    fn push_node(&mut self, node: Node, payload: usize) -> Result<()> {
        self.charge(size_of::<Node>().saturating_add(payload))?;
        self.nodes.push(node);
        self.push(Entry::Node(self.nodes.len() - 1))
    }

    fn pop(&mut self) -> Result<Entry> {
        if self.stack.len() <= self.fence() {
            return Err(self.underflow());
        }
        self.stack.pop().ok_or_else(|| self.underflow())
    }

    fn top(&self) -> Result<Entry> {
        if self.stack.len() <= self.fence() {
            return Err(self.underflow());
        }
        self.stack.last().copied().ok_or_else(|| self.underflow())
    }

    fn pop_mark(&mut self) -> Result<Vec<Entry>> {
        let Some(mark) = self.marks.pop() else {
            return Err(self.invalid("no MARK to pop to"));
        };
        Ok(self.stack.split_off(mark))
    }

    fn pairs(&self, items: Vec<Entry>) -> Result<Vec<(Entry, Entry)>> {
        if !items.len().is_multiple_of(2) {
            return Err(self.invalid("odd number of items for a dict"));
        }
        let mut it = items.into_iter();
        let mut pairs = Vec::with_capacity(it.len() / 2);
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        Ok(pairs)
    }

    fn node_mut(&mut self, e: Entry) -> Option<&mut Node> {
        match e {
            Entry::Node(id) => self.nodes.get_mut(id),
            _ => None,
        }
    }

    fn str_of(&self, e: Entry) -> Option<&str> {
        match e {
            Entry::Node(id) => match &self.nodes[id] {
                Node::Str(s) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    // ----- the memo -----

    fn memo_put(&mut self, index: u32) -> Result<()> {
        let e = self.top()?;
        if index as usize >= self.limits.max_memo_len {
            return Err(self.limit("memo size", self.limits.max_memo_len));
        }
        if self.memo.insert(index, e).is_none() {
            self.charge(2 * size_of::<(u32, Entry)>())?;
        }
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Result<()> {
        let Some(&e) = self.memo.get(&index) else {
            return Err(self.invalid(format!("memo key {index} was never stored")));
        };
        self.push(e)
    }

    // ----- values -----

    fn long(&mut self, n: usize) -> Result<()> {
        if n > self.limits.max_int_bytes {
            return Err(self.limit("int size", self.limits.max_int_bytes));
        }
        let bytes = self.take(n, "long data")?;
        self.push_int(Value::int_from_le_bytes(bytes))
    }

    fn decimal(&mut self, text: &[u8]) -> Result<()> {
        const MAX_DIGITS: usize = 4300;
        if text.len() > MAX_DIGITS + 1 {
            return Err(self.limit("int digits", MAX_DIGITS));
        }
        let v = parse_decimal(text).ok_or_else(|| self.invalid("not a decimal int"))?;
        self.push_int(v)
    }

    fn push_int(&mut self, v: Value) -> Result<()> {
        match v {
            Value::BigInt(b) if b.to_le_bytes().len() > self.limits.max_int_bytes => {
                Err(self.limit("int size", self.limits.max_int_bytes))
            }
            Value::BigInt(b) => {
                let len = b.to_le_bytes().len();
                self.push_node(Node::BigInt(b), len)
            }
            Value::Int(i) => self.push(Entry::Int(i)),
            _ => Err(self.invalid("not an int")),
        }
    }

    fn unicode(&mut self, n: usize) -> Result<()> {
        let bytes = self.take(n, "string data")?;
        let s = std::str::from_utf8(bytes)
            .map_err(|_| self.invalid("string is not UTF-8 (lone surrogates are not supported)"))?;
        self.push_node(Node::Str(s.to_owned()), n)
    }

    fn global(&mut self, module: String, name: String) -> Result<()> {
        let (module, name) = if self.protocol < 3 {
            python2_name(module, name)
        } else {
            (module, name)
        };
        let payload = module.len() + name.len();
        self.push_node(Node::Global { module, name }, payload)
    }

    fn tuple_id(&self, e: Entry, op: &str) -> Result<usize> {
        match e {
            Entry::Node(id) if matches!(self.nodes[id], Node::Tuple(_)) => Ok(id),
            _ => Err(self.invalid(format!("{op} arguments are not a tuple"))),
        }
    }

    fn push_object(
        &mut self,
        callable: Entry,
        args: usize,
        kwargs: Option<usize>,
        newobj: bool,
    ) -> Result<()> {
        let node = ObjectNode {
            callable,
            args,
            kwargs,
            newobj,
            list_items: Vec::new(),
            dict_items: Vec::new(),
            state: None,
        };
        self.push_node(Node::Object(Box::new(node)), size_of::<ObjectNode>())
    }

    fn extend_list(&mut self, op: &str, items: Vec<Entry>) -> Result<()> {
        let target = self.top()?;
        let max = self.limits.max_container_len;
        let offset = self.op_start;
        let list = match self.node_mut(target) {
            Some(Node::List(list)) => list,
            Some(Node::Object(o)) => &mut o.list_items,
            other => {
                let what = other.map_or("scalar", |n| n.type_name());
                return Err(PickleError::invalid(offset, format!("{op} on a {what}")));
            }
        };
        if list.len().saturating_add(items.len()) > max {
            return Err(self.limit("container length", max));
        }
        list.extend(items);
        Ok(())
    }

    fn extend_dict(&mut self, op: &str, pairs: Vec<(Entry, Entry)>) -> Result<()> {
        let target = self.top()?;
        let max = self.limits.max_container_len;
        let offset = self.op_start;
        let dict = match self.node_mut(target) {
            Some(Node::Dict(dict)) => dict,
            Some(Node::Object(o)) => &mut o.dict_items,
            other => {
                let what = other.map_or("scalar", |n| n.type_name());
                return Err(PickleError::invalid(offset, format!("{op} on a {what}")));
            }
        };
        if dict.len().saturating_add(pairs.len()) > max {
            return Err(self.limit("container length", max));
        }
        dict.extend(pairs);
        Ok(())
    }

    /// Data in disguise: the calls CPython pickles plain data as (protocols 0–3 bytes and sets,
    /// `bytearray`, dict views from `ForkingPickler`) come back as that data.
    fn normalize(&mut self, callable: Entry, args: usize) -> Result<Option<Node>> {
        let Entry::Node(c) = callable else {
            return Ok(None);
        };
        let Node::Global { module, name } = &self.nodes[c] else {
            return Ok(None);
        };
        let Node::Tuple(argv) = &self.nodes[args] else {
            return Ok(None);
        };
        let latin1 = |s: Entry, enc: Entry| -> Option<Vec<u8>> {
            if !matches!(self.str_of(enc)?, "latin1" | "latin-1") {
                return None;
            }
            self.str_of(s)?
                .chars()
                .map(|c| u8::try_from(u32::from(c)).ok())
                .collect()
        };
        let items = |e: Entry| -> Option<&Vec<Entry>> {
            match e {
                Entry::Node(id) => match &self.nodes[id] {
                    Node::List(v) | Node::Tuple(v) => Some(v),
                    _ => None,
                },
                _ => None,
            }
        };
        let node = match (module.as_str(), name.as_str(), argv.as_slice()) {
            ("builtins", "bytearray", []) => Node::ByteArray(Vec::new()),
            ("builtins", "bytearray", [Entry::Node(b)]) => match &self.nodes[*b] {
                Node::Bytes(b) => Node::ByteArray(b.clone()),
                _ => return Ok(None),
            },
            ("builtins", "bytearray", [s, enc]) => match latin1(*s, *enc) {
                Some(b) => Node::ByteArray(b),
                None => return Ok(None),
            },
            ("builtins", "bytes", []) => Node::Bytes(Vec::new()),
            ("_codecs", "encode", [s, enc]) => match latin1(*s, *enc) {
                Some(b) => Node::Bytes(b),
                None => return Ok(None),
            },
            ("builtins", "list", []) => Node::List(Vec::new()),
            ("builtins", "set", []) => Node::Set(Vec::new()),
            ("builtins", "frozenset", []) => Node::FrozenSet(Vec::new()),
            ("builtins", kind @ ("list" | "set" | "frozenset"), [e]) => match items(*e) {
                Some(v) if kind == "list" => Node::List(v.clone()),
                Some(v) if kind == "set" => Node::Set(v.clone()),
                Some(v) => Node::FrozenSet(v.clone()),
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        let copied = match &node {
            Node::Bytes(b) | Node::ByteArray(b) => b.len(),
            Node::List(v) | Node::Set(v) | Node::FrozenSet(v) => v.len() * size_of::<Entry>(),
            _ => 0,
        };
        self.charge(copied)?;
        Ok(Some(node))
    }

    // ----- the end -----

    fn stop(mut self) -> Result<Value> {
        let root = self.pop()?;
        if !self.stack.is_empty() || !self.marks.is_empty() {
            return Err(self.invalid("values left on the stack at STOP"));
        }
        if self.pos != self.data.len() {
            return Err(self.invalid("data after STOP"));
        }
        self.materialize(root)
    }

    /// Turns the arena into a tree, iteratively, copying shared nodes and refusing cycles.
    fn materialize(&mut self, root: Entry) -> Result<Value> {
        enum Task {
            Visit(Entry),
            Finish(usize),
        }
        let mut tasks = vec![Task::Visit(root)];
        let mut out: Vec<Value> = Vec::new();
        let mut on_path = vec![false; self.nodes.len()];
        let mut depth = 0usize;
        let value_size = size_of::<Value>();
        while let Some(task) = tasks.pop() {
            match task {
                Task::Visit(e) => {
                    let id = match e {
                        Entry::None => {
                            self.charge(value_size)?;
                            out.push(Value::None);
                            continue;
                        }
                        Entry::Bool(b) => {
                            self.charge(value_size)?;
                            out.push(Value::Bool(b));
                            continue;
                        }
                        Entry::Int(i) => {
                            self.charge(value_size)?;
                            out.push(Value::Int(i));
                            continue;
                        }
                        Entry::Float(x) => {
                            self.charge(value_size)?;
                            out.push(Value::Float(x));
                            continue;
                        }
                        Entry::Node(id) => id,
                    };
                    let leaf_size = match &self.nodes[id] {
                        Node::BigInt(b) => Some(b.to_le_bytes().len()),
                        Node::Str(s) => Some(s.len()),
                        Node::Bytes(b) | Node::ByteArray(b) => Some(b.len()),
                        Node::Global { module, name } => Some(module.len() + name.len()),
                        _ => None,
                    };
                    if let Some(payload) = leaf_size {
                        self.charge(value_size.saturating_add(payload))?;
                        out.push(self.leaf(id));
                        continue;
                    }
                    if on_path[id] {
                        return Err(self.invalid("a structure contains itself"));
                    }
                    if depth >= self.limits.max_depth {
                        return Err(self.limit("nesting depth", self.limits.max_depth));
                    }
                    self.charge(value_size)?;
                    depth += 1;
                    on_path[id] = true;
                    tasks.push(Task::Finish(id));
                    let first = tasks.len();
                    match &self.nodes[id] {
                        Node::Tuple(v) | Node::List(v) | Node::Set(v) | Node::FrozenSet(v) => {
                            tasks.extend(v.iter().map(|&e| Task::Visit(e)));
                        }
                        Node::Dict(pairs) => {
                            for &(k, v) in pairs {
                                tasks.push(Task::Visit(k));
                                tasks.push(Task::Visit(v));
                            }
                        }
                        Node::Object(o) => {
                            tasks.push(Task::Visit(o.callable));
                            if let Node::Tuple(args) = &self.nodes[o.args] {
                                tasks.extend(args.iter().map(|&e| Task::Visit(e)));
                            }
                            if let Some(Node::Dict(kw)) = o.kwargs.map(|k| &self.nodes[k]) {
                                for &(k, v) in kw {
                                    tasks.push(Task::Visit(k));
                                    tasks.push(Task::Visit(v));
                                }
                            }
                            tasks.extend(o.list_items.iter().map(|&e| Task::Visit(e)));
                            for &(k, v) in &o.dict_items {
                                tasks.push(Task::Visit(k));
                                tasks.push(Task::Visit(v));
                            }
                            if let Some(s) = o.state {
                                tasks.push(Task::Visit(s));
                            }
                        }
                        _ => {}
                    }
                    tasks[first..].reverse();
                }
                Task::Finish(id) => {
                    on_path[id] = false;
                    depth -= 1;
                    let v = self.assemble(id, &mut out)?;
                    out.push(v);
                }
            }
        }
        match (out.pop(), out.is_empty()) {
            (Some(v), true) => Ok(v),
            _ => Err(self.invalid("internal: materialized value count")),
        }
    }

    /// A copy of leaf node `id`.
    fn leaf(&self, id: usize) -> Value {
        match &self.nodes[id] {
            Node::BigInt(b) => Value::BigInt(b.clone()),
            Node::Str(s) => Value::Str(s.clone()),
            Node::Bytes(b) => Value::Bytes(b.clone()),
            Node::ByteArray(b) => Value::ByteArray(b.clone()),
            Node::Global { module, name } => Value::global(module.clone(), name.clone()),
            _ => Value::None,
        }
    }

    /// Builds container `id` from its children, the last values of `out`.
    fn assemble(&self, id: usize, out: &mut Vec<Value>) -> Result<Value> {
        let count = |v: &Vec<Entry>| v.len();
        let dict_len = |id: Option<usize>| match id.map(|k| &self.nodes[k]) {
            Some(Node::Dict(kw)) => kw.len(),
            _ => 0,
        };
        let n = match &self.nodes[id] {
            Node::Tuple(v) | Node::List(v) | Node::Set(v) | Node::FrozenSet(v) => count(v),
            Node::Dict(pairs) => 2 * pairs.len(),
            Node::Object(o) => {
                let args = match &self.nodes[o.args] {
                    Node::Tuple(a) => a.len(),
                    _ => 0,
                };
                1 + args
                    + 2 * dict_len(o.kwargs)
                    + o.list_items.len()
                    + 2 * o.dict_items.len()
                    + usize::from(o.state.is_some())
            }
            _ => 0,
        };
        let Some(start) = out.len().checked_sub(n) else {
            return Err(self.invalid("internal: missing children"));
        };
        let mut children = out.split_off(start).into_iter();
        fn take_pairs(it: &mut std::vec::IntoIter<Value>, n: usize) -> Vec<(Value, Value)> {
            let mut pairs = Vec::with_capacity(n);
            for _ in 0..n {
                if let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
            }
            pairs
        }
        Ok(match &self.nodes[id] {
            Node::Tuple(_) => Value::Tuple(children.collect()),
            Node::List(_) => Value::List(children.collect()),
            Node::Set(_) => Value::Set(children.collect()),
            Node::FrozenSet(_) => Value::FrozenSet(children.collect()),
            Node::Dict(pairs) => Value::Dict(take_pairs(&mut children, pairs.len())),
            Node::Object(o) => {
                let callable = children.next().unwrap_or(Value::None);
                let args_len = match &self.nodes[o.args] {
                    Node::Tuple(a) => a.len(),
                    _ => 0,
                };
                let args = children.by_ref().take(args_len).collect();
                let kind = match (o.newobj, o.kwargs) {
                    (false, _) => ObjectKind::Reduce,
                    (true, None) => ObjectKind::NewObj,
                    (true, Some(_)) => ObjectKind::NewObjEx {
                        kwargs: take_pairs(&mut children, dict_len(o.kwargs)),
                    },
                };
                let list_items = children.by_ref().take(o.list_items.len()).collect();
                let dict_items = take_pairs(&mut children, o.dict_items.len());
                let state = children.next();
                Value::Object(Box::new(Object {
                    callable,
                    kind,
                    args,
                    list_items,
                    dict_items,
                    state,
                }))
            }
            _ => return Err(self.invalid("internal: not a container")),
        })
    }
}

/// Python 2 names that protocol 0–2 pickles written by Python 3 carry (`fix_imports`, a
/// subset of CPython's `_compat_pickle`).
fn python2_name(module: String, name: String) -> (String, String) {
    let module_to = match module.as_str() {
        "__builtin__" | "exceptions" => "builtins",
        "copy_reg" => "copyreg",
        "Queue" => "queue",
        _ => return (module, name),
    };
    let name_to = match (module.as_str(), name.as_str()) {
        ("__builtin__", "xrange") => "range",
        ("__builtin__", "unicode" | "basestring") => "str",
        ("__builtin__", "long") => "int",
        ("__builtin__", "unichr") => "chr",
        ("exceptions", "StandardError") => "Exception",
        _ => return (module_to.to_owned(), name),
    };
    (module_to.to_owned(), name_to.to_owned())
}

/// Python's `raw_unicode_escape` codec (protocol 0 `UNICODE`): Latin-1 bytes, where `\uXXXX`
/// and `\UXXXXXXXX` after an odd number of backslashes are escapes. `None` on a bad escape or a
/// lone surrogate.
fn raw_unicode_escape(bytes: &[u8]) -> Option<String> {
    let mut s = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            s.push(char::from(bytes[i]));
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i] == b'\\' {
            i += 1;
        }
        let run = i - start;
        let digits = match bytes.get(i) {
            Some(b'u') if !run.is_multiple_of(2) => 4,
            Some(b'U') if !run.is_multiple_of(2) => 8,
            _ => {
                s.extend(std::iter::repeat_n('\\', run));
                continue;
            }
        };
        s.extend(std::iter::repeat_n('\\', run - 1));
        let hex = bytes.get(i + 1..i + 1 + digits)?;
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let code = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
        s.push(char::from_u32(code)?);
        i += 1 + digits;
    }
    Some(s)
}
