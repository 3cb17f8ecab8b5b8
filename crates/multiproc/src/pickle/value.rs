//! Pickle's data model: what a pickle can hold, as data.

use std::fmt::{self, Write as _};

/// A Python value as a pickle carries it.
///
/// Objects built by calling something (`REDUCE`, `NEWOBJ`) stay data: [`Value::Global`] names
/// the callable, [`Object`] records the call. Nothing is imported or run. `BUILD`, `APPENDS`
/// and `SETITEMS` applied to such an object are recorded on it.
///
/// Equality is structural; floats compare as `f64` (so `NaN != NaN`, like Python), dicts and
/// sets compare in order.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An `int` that fits `i64`.
    Int(i64),
    /// An `int` that does not fit `i64` (never holds one that does).
    BigInt(BigInt),
    /// A `float`.
    Float(f64),
    /// A `str`.
    Str(String),
    /// A `bytes`.
    Bytes(Vec<u8>),
    /// A `bytearray`.
    ByteArray(Vec<u8>),
    /// A `tuple`.
    Tuple(Vec<Value>),
    /// A `list`.
    List(Vec<Value>),
    /// A `dict`, in insertion order; keys are any value.
    Dict(Vec<(Value, Value)>),
    /// A `set`, in the order the pickle lists it.
    Set(Vec<Value>),
    /// A `frozenset`, in the order the pickle lists it.
    FrozenSet(Vec<Value>),
    /// A module-level name: a class, an exception type, a function (`queue.Empty`,
    /// `multiprocessing.managers.Token`, …).
    Global {
        /// `queue`, `builtins`, `multiprocessing.managers`, …
        module: String,
        /// The qualified name inside the module.
        name: String,
    },
    /// An instance built by calling a global (`builtins.KeyError('missing')`, a `Token`, …).
    Object(Box<Object>),
}

/// How a pickled instance was built: `callable(*args)` or `cls.__new__(cls, *args)`, then
/// list items appended, dict items set and `BUILD` state applied.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Object {
    /// What is called: almost always a [`Value::Global`].
    pub(crate) callable: Value,
    /// Which construction opcode.
    pub(crate) kind: ObjectKind,
    /// The positional arguments.
    pub(crate) args: Vec<Value>,
    /// Items added by `APPEND`/`APPENDS` (list subclasses).
    pub(crate) list_items: Vec<Value>,
    /// Items set by `SETITEM`/`SETITEMS` (`OrderedDict`, dict subclasses).
    pub(crate) dict_items: Vec<(Value, Value)>,
    /// The argument of `BUILD` (`__setstate__` or `__dict__` update), if any.
    pub(crate) state: Option<Value>,
}

/// The opcode that built an [`Object`].
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ObjectKind {
    /// `REDUCE`: `callable(*args)` (exceptions, `RebuildProxy`, `array.array`).
    Reduce,
    /// `NEWOBJ`: `cls.__new__(cls, *args)` (`Token`, `Namespace`, plain classes).
    NewObj,
    /// `NEWOBJ_EX`: `cls.__new__(cls, *args, **kwargs)`.
    NewObjEx {
        /// The keyword arguments.
        kwargs: Vec<(Value, Value)>,
    },
}

impl Value {
    /// A [`Value::Global`].
    pub(crate) fn global(module: impl Into<String>, name: impl Into<String>) -> Value {
        Value::Global {
            module: module.into(),
            name: name.into(),
        }
    }

    /// `module.name(*args)` as an [`Object`] built by `REDUCE`: how exceptions travel
    /// (`Value::reduce("queue", "Empty", vec![])`).
    pub(crate) fn reduce(module: &str, name: &str, args: Vec<Value>) -> Value {
        Value::Object(Box::new(Object::new(
            Value::global(module, name),
            ObjectKind::Reduce,
            args,
        )))
    }

    /// A `str`.
    pub(crate) fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }

    /// The int whose little-endian two's-complement bytes these are (any length).
    pub(crate) fn int_from_le_bytes(bytes: &[u8]) -> Value {
        let trimmed = trim_sign_bytes(bytes);
        if trimmed.len() <= 8 {
            let fill = if trimmed.last().is_some_and(|b| b & 0x80 != 0) {
                0xff
            } else {
                0
            };
            let mut buf = [fill; 8];
            buf[..trimmed.len()].copy_from_slice(trimmed);
            Value::Int(i64::from_le_bytes(buf))
        } else {
            Value::BigInt(BigInt(trimmed.to_vec()))
        }
    }

    /// An int from an `i128`.
    pub(crate) fn from_i128(v: i128) -> Value {
        Value::int_from_le_bytes(&v.to_le_bytes())
    }

    /// An int from a `u128`.
    pub(crate) fn from_u128(v: u128) -> Value {
        let mut bytes = [0u8; 17];
        bytes[..16].copy_from_slice(&v.to_le_bytes());
        Value::int_from_le_bytes(&bytes)
    }

    /// The string, if this is a `str`.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// `(module, name)`, if this is a global.
    pub(crate) fn as_global(&self) -> Option<(&str, &str)> {
        match self {
            Value::Global { module, name } => Some((module, name)),
            _ => None,
        }
    }

    /// The object, if this is one.
    pub(crate) fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The Python type name (`'int'`, `'tuple'`, …; `'global'` / `'object'` for the rest).
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::None => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::ByteArray(_) => "bytearray",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Set(_) => "set",
            Value::FrozenSet(_) => "frozenset",
            Value::Global { .. } => "global",
            Value::Object(_) => "object",
        }
    }
}

impl Object {
    /// An object with no list items, dict items or state.
    pub(crate) fn new(callable: Value, kind: ObjectKind, args: Vec<Value>) -> Object {
        Object {
            callable,
            kind,
            args,
            list_items: Vec::new(),
            dict_items: Vec::new(),
            state: None,
        }
    }

    /// `(module, name)` of the callable, when it is a global.
    pub(crate) fn global(&self) -> Option<(&str, &str)> {
        self.callable.as_global()
    }
}

/// An int beyond `i64`: its minimal little-endian two's-complement bytes (more than 8).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct BigInt(Vec<u8>);

impl BigInt {
    /// The minimal little-endian two's-complement bytes (as `LONG1`/`LONG4` carry them).
    pub(crate) fn to_le_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether it is below zero.
    pub(crate) fn is_negative(&self) -> bool {
        self.0.last().is_some_and(|b| b & 0x80 != 0)
    }

    /// The value, if it fits an `i128`.
    pub(crate) fn to_i128(&self) -> Option<i128> {
        if self.0.len() > 16 {
            return None;
        }
        let mut buf = [if self.is_negative() { 0xff } else { 0 }; 16];
        buf[..self.0.len()].copy_from_slice(&self.0);
        Some(i128::from_le_bytes(buf))
    }

    /// The value, if it fits a `u128`.
    pub(crate) fn to_u128(&self) -> Option<u128> {
        let bytes = match self.0.split_last() {
            _ if self.is_negative() => return None,
            Some((&0, rest)) => rest,
            _ => &self.0[..],
        };
        if bytes.len() > 16 {
            return None;
        }
        let mut buf = [0u8; 16];
        buf[..bytes.len()].copy_from_slice(bytes);
        Some(u128::from_le_bytes(buf))
    }

    /// Its decimal digits, with a `-` sign when negative.
    fn to_decimal(&self) -> String {
        // Magnitude as little-endian u32 limbs, then repeated division by 10^9.
        let mut mag = self.0.clone();
        if self.is_negative() {
            negate(&mut mag);
        }
        let mut limbs: Vec<u32> = mag
            .chunks(4)
            .map(|c| {
                let mut b = [0u8; 4];
                b[..c.len()].copy_from_slice(c);
                u32::from_le_bytes(b)
            })
            .collect();
        let mut groups = Vec::new();
        while limbs.iter().any(|&l| l != 0) {
            let mut rem = 0u64;
            for l in limbs.iter_mut().rev() {
                let cur = (rem << 32) | u64::from(*l);
                *l = (cur / 1_000_000_000) as u32;
                rem = cur % 1_000_000_000;
            }
            groups.push(rem as u32);
            while limbs.last() == Some(&0) {
                limbs.pop();
            }
        }
        let mut s = String::from(if self.is_negative() { "-" } else { "" });
        match groups.split_last() {
            None => s.push('0'),
            Some((top, rest)) => {
                let _ = write!(s, "{top}");
                for g in rest.iter().rev() {
                    let _ = write!(s, "{g:09}");
                }
            }
        }
        s
    }
}

/// Drops sign-extension bytes that do not change the value.
fn trim_sign_bytes(mut bytes: &[u8]) -> &[u8] {
    while let [rest @ .., second, last] = bytes {
        let redundant = (*last == 0 && second & 0x80 == 0) || (*last == 0xff && second & 0x80 != 0);
        if !redundant {
            break;
        }
        bytes = &bytes[..rest.len() + 1];
    }
    bytes
}

/// Two's-complement negation in place (little-endian).
pub(super) fn negate(bytes: &mut [u8]) {
    let mut carry = true;
    for b in bytes.iter_mut() {
        let (v, c) = (!*b).overflowing_add(u8::from(carry));
        *b = v;
        carry = c;
    }
}

/// The int a decimal literal (`-123`) denotes: ASCII digits with an optional sign. `None` if
/// it is not one.
pub(crate) fn parse_decimal(text: &[u8]) -> Option<Value> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if let Ok(v) = std::str::from_utf8(text).ok()?.parse::<i64>() {
        return Some(Value::Int(v));
    }
    let mut limbs: Vec<u32> = Vec::new();
    for chunk in digits.chunks(9) {
        let mut carry: u64 = chunk
            .iter()
            .fold(0, |acc, d| acc * 10 + u64::from(d - b'0'));
        let scale = 10u64.pow(chunk.len() as u32);
        for l in limbs.iter_mut() {
            let cur = u64::from(*l) * scale + carry;
            *l = cur as u32;
            carry = cur >> 32;
        }
        if carry != 0 {
            limbs.push(carry as u32);
        }
    }
    let mut bytes: Vec<u8> = limbs.iter().flat_map(|l| l.to_le_bytes()).collect();
    bytes.push(0);
    if negative {
        negate(&mut bytes);
    }
    Some(Value::int_from_le_bytes(&bytes))
}

/// Minimal little-endian two's-complement bytes of an `i64` (as `LONG1` carries it).
pub(super) fn i64_le_bytes(v: i64) -> Vec<u8> {
    trim_sign_bytes(&v.to_le_bytes()).to_vec()
}

/// Python-like `repr`: what `print(repr(value))` shows, with objects as
/// `module.name(args)` (`REDUCE`) or `module.name.__new__(args)` (`NEWOBJ`), followed by
/// `+[list items]`, `+{dict items}`, `+state(...)` when present.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::None => f.write_str("None"),
            Value::Bool(true) => f.write_str("True"),
            Value::Bool(false) => f.write_str("False"),
            Value::Int(i) => write!(f, "{i}"),
            Value::BigInt(b) if b.0.len() <= 2048 => f.write_str(&b.to_decimal()),
            Value::BigInt(b) => write!(f, "<int of {} bytes>", b.0.len()),
            Value::Float(x) => write_float(f, *x),
            Value::Str(s) => write_str_repr(f, s),
            Value::Bytes(b) => write_bytes_repr(f, b),
            Value::ByteArray(b) => {
                f.write_str("bytearray(")?;
                write_bytes_repr(f, b)?;
                f.write_str(")")
            }
            Value::Tuple(items) => {
                f.write_str("(")?;
                write_items(f, items)?;
                f.write_str(if items.len() == 1 { ",)" } else { ")" })
            }
            Value::List(items) => {
                f.write_str("[")?;
                write_items(f, items)?;
                f.write_str("]")
            }
            Value::Dict(items) => write_dict(f, items),
            Value::Set(items) if items.is_empty() => f.write_str("set()"),
            Value::Set(items) => {
                f.write_str("{")?;
                write_items(f, items)?;
                f.write_str("}")
            }
            Value::FrozenSet(items) if items.is_empty() => f.write_str("frozenset()"),
            Value::FrozenSet(items) => {
                f.write_str("frozenset({")?;
                write_items(f, items)?;
                f.write_str("})")
            }
            Value::Global { module, name } => write!(f, "{module}.{name}"),
            Value::Object(o) => {
                write!(f, "{}", o.callable)?;
                f.write_str(match o.kind {
                    ObjectKind::Reduce => "(",
                    _ => ".__new__(",
                })?;
                write_items(f, &o.args)?;
                if let ObjectKind::NewObjEx { kwargs } = &o.kind {
                    for (i, (k, v)) in kwargs.iter().enumerate() {
                        if i > 0 || !o.args.is_empty() {
                            f.write_str(", ")?;
                        }
                        match k {
                            Value::Str(k) => write!(f, "{k}={v}")?,
                            k => write!(f, "**{{{k}: {v}}}")?,
                        }
                    }
                }
                f.write_str(")")?;
                if !o.list_items.is_empty() {
                    f.write_str("+[")?;
                    write_items(f, &o.list_items)?;
                    f.write_str("]")?;
                }
                if !o.dict_items.is_empty() {
                    f.write_str("+")?;
                    write_dict(f, &o.dict_items)?;
                }
                if let Some(state) = &o.state {
                    write!(f, "+state({state})")?;
                }
                Ok(())
            }
        }
    }
}

fn write_items(f: &mut fmt::Formatter<'_>, items: &[Value]) -> fmt::Result {
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{v}")?;
    }
    Ok(())
}

fn write_dict(f: &mut fmt::Formatter<'_>, items: &[(Value, Value)]) -> fmt::Result {
    f.write_str("{")?;
    for (i, (k, v)) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{k}: {v}")?;
    }
    f.write_str("}")
}

fn write_float(f: &mut fmt::Formatter<'_>, x: f64) -> fmt::Result {
    f.write_str(&float_repr(x))
}

/// `repr(x)` of a Python float: the shortest digits that read back as `x`, in positional
/// form for decimal exponents from -4 to 15 (always with a fraction: `1.0`), otherwise as
/// `1e+16` / `1.5e-05`.
pub(crate) fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x < 0.0 { "-inf" } else { "inf" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: `-1.2345e-7`.
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        if point <= 0 {
            let zeros = "0".repeat(point.unsigned_abs() as usize);
            format!("{sign}0.{zeros}{digits}")
        } else {
            let point = point as usize;
            let (int, frac) = if digits.len() > point {
                (digits[..point].to_string(), digits[point..].to_string())
            } else {
                (format!("{digits:0<point$}"), "0".to_string())
            };
            format!("{sign}{int}.{frac}")
        }
    } else {
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exp.unsigned_abs())
    }
}

/// Whether Python's `str.isprintable()` holds for `c` (what `repr` leaves unescaped):
/// not a control, format, surrogate, private-use or separator character (a space is
/// printable). Unassigned code points are not known here and count as printable.
pub(crate) fn is_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    let n = u32::from(c);
    let format = matches!(
        n,
        0xad | 0x600..=0x605
            | 0x61c
            | 0x6dd
            | 0x70f
            | 0x890..=0x891
            | 0x8e2
            | 0x180e
            | 0x200b..=0x200f
            | 0x202a..=0x202e
            | 0x2060..=0x2064
            | 0x2066..=0x206f
            | 0xfeff
            | 0xfff9..=0xfffb
            | 0x110bd
            | 0x110cd
            | 0x13430..=0x1343f
            | 0x1bca0..=0x1bca3
            | 0x1d173..=0x1d17a
            | 0xe0001
            | 0xe0020..=0xe007f
    );
    let private = matches!(n, 0xe000..=0xf8ff | 0xf0000..=0xffffd | 0x100000..=0x10fffd);
    !(c.is_control() || c.is_whitespace() || format || private)
}

fn quote_for(has_single: bool, has_double: bool) -> char {
    if has_single && !has_double { '"' } else { '\'' }
}

fn write_str_repr(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    let quote = quote_for(s.contains('\''), s.contains('"'));
    f.write_char(quote)?;
    for c in s.chars() {
        match c {
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if c == quote => write!(f, "\\{c}")?,
            c if !is_printable(c) => match u32::from(c) {
                n @ 0..=0xff => write!(f, "\\x{n:02x}")?,
                n @ 0x100..=0xffff => write!(f, "\\u{n:04x}")?,
                n => write!(f, "\\U{n:08x}")?,
            },
            c => f.write_char(c)?,
        }
    }
    f.write_char(quote)
}

fn write_bytes_repr(f: &mut fmt::Formatter<'_>, b: &[u8]) -> fmt::Result {
    let quote = quote_for(b.contains(&b'\''), b.contains(&b'"'));
    f.write_char('b')?;
    f.write_char(quote)?;
    for &c in b {
        match c {
            b'\\' => f.write_str("\\\\")?,
            b'\n' => f.write_str("\\n")?,
            b'\r' => f.write_str("\\r")?,
            b'\t' => f.write_str("\\t")?,
            c if char::from(c) == quote => write!(f, "\\{quote}")?,
            0x20..=0x7e => f.write_char(char::from(c))?,
            c => write!(f, "\\x{c:02x}")?,
        }
    }
    f.write_char(quote)
}
