//! CPython's second manager serializer, `BaseManager(serializer='xmlrpclib')`: each message
//! is `xmlrpc.client.dumps((obj,), None, None, None, 1)` (no method name, `allow_none`): a
//! bare `<params>` element holding one value, read into the same [`Value`] model as pickles.
//!
//! XML-RPC has fewer types than pickle: arrays come back as lists (so requests are lists, not
//! tuples), structs as dicts with str keys, `base64` as bytes; ints beyond 64 bits, sets and
//! objects cannot be written (CPython's marshaller refuses them too). Reading bounds nesting
//! and never resolves external entities: only the five XML entities and character
//! references are known.

use base64::Engine as _;
use quick_xml::Reader;
use quick_xml::events::Event;

use crate::pickle::Value;

/// The deepest nesting read, as for pickles.
const MAX_DEPTH: usize = 256;

/// Whether `message` is XML-RPC rather than a pickle (a pickle starts with `\x80`, or an
/// opcode that is never `<`).
pub(crate) fn is_xmlrpc(message: &[u8]) -> bool {
    let start = message.trim_ascii_start();
    [&b"<params>"[..], b"<?xml", b"<methodResponse>"]
        .iter()
        .any(|p| start.starts_with(p))
}

/// An element read: its name, its children and its text.
#[derive(Default)]
struct Element {
    name: String,
    children: Vec<Element>,
    text: String,
}

/// The value a message carries: `<params><param><value>…`, bare or in a
/// `methodResponse`.
///
/// # Errors
/// A message that is not well-formed XML, does not hold one value, or holds a value XML-RPC
/// does not define.
pub(crate) fn decode(message: &[u8]) -> Result<Value, String> {
    let root = parse(message)?;
    let params = match root.name.as_str() {
        "params" => &root,
        "methodResponse" => root
            .children
            .iter()
            .find(|c| c.name == "params")
            .ok_or("a methodResponse without params")?,
        other => return Err(format!("expected <params>, not <{other}>")),
    };
    let value = params
        .children
        .iter()
        .find(|c| c.name == "param")
        .and_then(|p| p.children.iter().find(|c| c.name == "value"))
        .ok_or("params without a value")?;
    value_of(value)
}

fn parse(message: &[u8]) -> Result<Element, String> {
    let mut reader = Reader::from_reader(message);
    let mut stack: Vec<Element> = vec![Element::default()];
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("bad XML at {}: {e}", reader.buffer_position()))?;
        match event {
            Event::Start(e) => {
                if stack.len() > MAX_DEPTH {
                    return Err(format!("XML nested deeper than {MAX_DEPTH}"));
                }
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                stack.push(Element {
                    name,
                    ..Element::default()
                });
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                if let Some(top) = stack.last_mut() {
                    top.children.push(Element {
                        name,
                        ..Element::default()
                    });
                }
            }
            Event::End(_) => {
                let done = stack.pop().ok_or("unbalanced XML")?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => return Err("unbalanced XML".into()),
                }
            }
            Event::Text(t) => {
                let text = t.decode().map_err(|e| format!("bad text: {e}"))?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&text);
                }
            }
            Event::CData(t) => {
                let text = t.decode().map_err(|e| format!("bad text: {e}"))?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&text);
                }
            }
            Event::GeneralRef(r) => {
                let c = match r
                    .resolve_char_ref()
                    .map_err(|e| format!("bad reference: {e}"))?
                {
                    Some(c) => c,
                    None => match r.as_ref() {
                        b"amp" => '&',
                        b"lt" => '<',
                        b"gt" => '>',
                        b"quot" => '"',
                        b"apos" => '\'',
                        other => {
                            return Err(format!(
                                "unknown entity &{};",
                                String::from_utf8_lossy(other)
                            ));
                        }
                    },
                };
                if let Some(top) = stack.last_mut() {
                    top.text.push(c);
                }
            }
            Event::DocType(_) => return Err("a DOCTYPE is not accepted".into()),
            Event::Eof => break,
            _ => {}
        }
    }
    let mut document = stack.pop().ok_or("unbalanced XML")?;
    if !stack.is_empty() {
        return Err("XML ends inside an element".into());
    }
    document
        .children
        .pop()
        .filter(|_| document.children.is_empty())
        .ok_or_else(|| "expected one root element".to_string())
}

fn value_of(value: &Element) -> Result<Value, String> {
    let Some(typed) = value.children.first() else {
        // `<value>text</value>`: a string.
        return Ok(Value::Str(value.text.clone()));
    };
    let text = typed.text.trim();
    Ok(match typed.name.as_str() {
        "string" => Value::Str(typed.text.clone()),
        "nil" => Value::None,
        "boolean" => match text {
            "0" => Value::Bool(false),
            "1" => Value::Bool(true),
            other => return Err(format!("bad boolean {other:?}")),
        },
        "int" | "i1" | "i2" | "i4" | "i8" | "biginteger" => {
            text.parse::<i64>().map(Value::Int).or_else(|_| {
                crate::pickle::parse_decimal(text.as_bytes()).ok_or(format!("bad int {text:?}"))
            })?
        }
        "double" | "float" => {
            Value::Float(text.parse().map_err(|_| format!("bad double {text:?}"))?)
        }
        "base64" => {
            let compact: String = text.split_ascii_whitespace().collect();
            Value::Bytes(
                base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .map_err(|e| format!("bad base64: {e}"))?,
            )
        }
        // CPython reads it as a `DateTime` holding this text.
        "dateTime.iso8601" => Value::reduce("xmlrpc.client", "DateTime", vec![Value::str(text)]),
        "array" => {
            let data = typed
                .children
                .iter()
                .find(|c| c.name == "data")
                .ok_or("an array without data")?;
            Value::List(
                data.children
                    .iter()
                    .filter(|c| c.name == "value")
                    .map(value_of)
                    .collect::<Result<_, _>>()?,
            )
        }
        "struct" => {
            let mut pairs = Vec::new();
            for member in typed.children.iter().filter(|c| c.name == "member") {
                let name = member
                    .children
                    .iter()
                    .find(|c| c.name == "name")
                    .ok_or("a struct member without a name")?;
                let v = member
                    .children
                    .iter()
                    .find(|c| c.name == "value")
                    .ok_or("a struct member without a value")?;
                pairs.push((Value::Str(name.text.clone()), value_of(v)?));
            }
            Value::Dict(pairs)
        }
        other => return Err(format!("unknown XML-RPC type <{other}>")),
    })
}

/// `value` as CPython's `dumps((value,), None, None, None, 1)` writes it.
///
/// # Errors
/// A value XML-RPC cannot hold: an int beyond 64 bits, a set, a struct key that is not a
/// str, an object.
pub(crate) fn encode(value: &Value) -> Result<Vec<u8>, String> {
    let mut out = String::from("<params>\n<param>\n");
    write_value(value, &mut out, 0)?;
    out.push_str("</param>\n</params>\n");
    Ok(out.into_bytes())
}

fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            // A carriage return would come back as a newline.
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

fn write_value(value: &Value, out: &mut String, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("a value nested deeper than {MAX_DEPTH}"));
    }
    out.push_str("<value>");
    match value {
        Value::None => out.push_str("<nil/>"),
        Value::Bool(b) => {
            out.push_str(if *b {
                "<boolean>1</boolean>"
            } else {
                "<boolean>0</boolean>"
            });
        }
        Value::Int(n) if i32::try_from(*n).is_ok() => out.push_str(&format!("<int>{n}</int>")),
        Value::Int(n) => out.push_str(&format!("<i8>{n}</i8>")),
        Value::Float(f) => out.push_str(&format!(
            "<double>{}</double>",
            crate::pickle::float_repr(*f)
        )),
        Value::Str(s) => {
            out.push_str("<string>");
            escape(s, out);
            out.push_str("</string>");
        }
        Value::Bytes(b) | Value::ByteArray(b) => {
            out.push_str("<base64>\n");
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(b));
            out.push_str("\n</base64>");
        }
        Value::Tuple(items) | Value::List(items) => {
            out.push_str("<array><data>\n");
            for item in items {
                write_value(item, out, depth + 1)?;
            }
            out.push_str("</data></array>");
        }
        Value::Dict(pairs) => {
            out.push_str("<struct>\n");
            for (k, v) in pairs {
                let Value::Str(name) = k else {
                    return Err(format!(
                        "dictionary key must be string, not {}",
                        k.type_name()
                    ));
                };
                out.push_str("<member>\n<name>");
                escape(name, out);
                out.push_str("</name>\n");
                write_value(v, out, depth + 1)?;
                out.push_str("</member>\n");
            }
            out.push_str("</struct>");
        }
        Value::Object(o) if o.global() == Some(("xmlrpc.client", "DateTime")) => {
            let text = o.args.first().and_then(Value::as_str).unwrap_or_default();
            out.push_str("<dateTime.iso8601>");
            escape(text, out);
            out.push_str("</dateTime.iso8601>");
        }
        other => return Err(format!("cannot marshal {} objects", other.type_name())),
    }
    out.push_str("</value>\n");
    Ok(())
}

/// For the fuzz target: decodes `data`, and what decodes must encode and decode back the
/// same (or be refused by the encoder, for what XML-RPC cannot write).
pub(crate) fn fuzz_decode(data: &[u8]) {
    if let Ok(value) = decode(data)
        && let Ok(bytes) = encode(&value)
    {
        let back = decode(&bytes).expect("what we wrote reads back");
        assert!(crate::pickle::same(&back, &value), "{back} != {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pickle::same;

    /// What CPython 3.11's `xmlrpc.client.dumps(((None, 'create', ('Queue',), {'n': 1}),),
    /// None, None, None, 1)` writes.
    const REQUEST: &str = "<params>\n<param>\n\
        <value><array><data>\n<value><nil/></value><value><string>create</string></value>\n\
        <value><array><data>\n<value><string>Queue</string></value>\n</data></array></value>\n\
        <value><struct>\n<member>\n<name>n</name>\n<value><int>1</int></value>\n</member>\n\
        </struct></value>\n</data></array></value>\n</param>\n</params>\n";

    #[test]
    fn reads_what_cpython_writes() {
        let v = decode(REQUEST.as_bytes()).unwrap();
        let want = Value::List(vec![
            Value::None,
            Value::str("create"),
            Value::List(vec![Value::str("Queue")]),
            Value::Dict(vec![(Value::str("n"), Value::Int(1))]),
        ]);
        assert!(same(&v, &want), "{v}");
        assert!(is_xmlrpc(REQUEST.as_bytes()));
        assert!(!is_xmlrpc(b"\x80\x04\x95"));
    }

    #[test]
    fn round_trips_the_values_xmlrpc_has() {
        let v = Value::List(vec![
            Value::str("hall\u{e5} <&> \r\n"),
            Value::None,
            Value::Bool(true),
            Value::Float(2.25),
            Value::Int(-7),
            Value::Int(1 << 40),
            Value::Bytes(b"hall\xe5 v\xe4rlden".to_vec()),
            Value::Dict(vec![(Value::str("k"), Value::List(vec![]))]),
        ]);
        let back = decode(&encode(&v).unwrap()).unwrap();
        assert!(same(&back, &v), "{back}");
        assert!(encode(&Value::Set(vec![])).is_err());
        assert!(encode(&Value::Dict(vec![(Value::Int(1), Value::None)])).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any bytes: an error or a value that round-trips, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            fuzz_decode(&data);
        }

        /// Well-formed messages with a few bytes changed.
        #[test]
        fn damaged_messages_never_panic(
            flips in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()), 1..6),
        ) {
            let mut data = REQUEST.as_bytes().to_vec();
            for (at, byte) in flips {
                let i = at.index(data.len());
                data[i] = byte;
            }
            fuzz_decode(&data);
        }
    }

    #[test]
    fn refuses_what_is_not_xmlrpc() {
        for bad in [
            &b"<?xml version='1.0'?><methodResponse><params><param><value><int>x</int></value></param></params></methodResponse>"[..],
            b"<?xml version='1.0'?><methodResponse>",
            b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><methodResponse/>",
            b"<?xml version='1.0'?><methodResponse><params><param><value><string>&e;</string></value></param></params></methodResponse>",
            b"<methodCall/>",
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let deep = format!(
            "<methodResponse><params><param>{}{}</param></params></methodResponse>",
            "<value><array><data>".repeat(300),
            "</data></array></value>".repeat(300)
        );
        assert!(decode(deep.as_bytes()).is_err());
    }
}
