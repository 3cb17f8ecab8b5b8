//! Stream entries as they come from the broker (untrusted: every reply shape is checked, every
//! length bounded) and the items in them.

use redis::Value;
use serde::de::DeserializeOwned;

use super::{CODEC_JSON, CODEC_POSTCARD, MAX_BODY};

/// An entry read from the stream.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) id: String,
    pub(super) fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    pub(super) fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }
}

/// Decodes an entry's item, or says why it cannot be.
pub(super) fn decode<T: DeserializeOwned>(entry: &Entry) -> std::result::Result<T, String> {
    let codec = entry.field("codec").unwrap_or(CODEC_JSON.as_bytes());
    let body = entry
        .field("body")
        .ok_or_else(|| "no body field".to_string())?;
    decode_body(codec, body)
}

/// Decodes an item in `codec`, or says why it cannot be.
pub(super) fn decode_body<T: DeserializeOwned>(
    codec: &[u8],
    body: &[u8],
) -> std::result::Result<T, String> {
    if body.len() > MAX_BODY {
        return Err(format!("body of {} bytes is over the limit", body.len()));
    }
    match codec {
        c if c == CODEC_JSON.as_bytes() => {
            serde_json::from_slice(body).map_err(|e| format!("body does not decode: {e}"))
        }
        // Bounded by the body: postcard reads no length it does not find there.
        c if c == CODEC_POSTCARD.as_bytes() => {
            postcard::from_bytes(body).map_err(|e| format!("body does not decode: {e}"))
        }
        other => Err(format!(
            "unknown codec {:?}",
            String::from_utf8_lossy(&other[..other.len().min(64)])
        )),
    }
}

pub(super) fn as_bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.as_bytes().to_vec()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

pub(super) fn as_string(v: &Value) -> Option<String> {
    as_bytes(v).and_then(|b| String::from_utf8(b).ok())
}

pub(super) fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => as_string(other)?.parse().ok(),
    }
}

/// The value of `key` in a reply row that is a map or a flat `[key, value, ...]` array.
pub(super) fn field_of(row: &Value, key: &str) -> Option<Value> {
    match row {
        Value::Array(kv) => kv
            .chunks_exact(2)
            .find(|p| as_string(&p[0]).as_deref() == Some(key))
            .map(|p| p[1].clone()),
        Value::Map(kv) => kv
            .iter()
            .find(|(k, _)| as_string(k).as_deref() == Some(key))
            .map(|(_, v)| v.clone()),
        _ => None,
    }
}

/// `[id, [field, value, ...]]`.
pub(super) fn parse_entry(v: &Value) -> Option<Entry> {
    let Value::Array(parts) = v else { return None };
    let id = as_string(parts.first()?)?;
    let fields = match parts.get(1)? {
        Value::Array(kv) => kv
            .chunks_exact(2)
            .filter_map(|p| Some((as_bytes(&p[0])?, as_bytes(&p[1])?)))
            .collect(),
        Value::Map(kv) => kv
            .iter()
            .filter_map(|(k, v)| Some((as_bytes(k)?, as_bytes(v)?)))
            .collect(),
        _ => Vec::new(),
    };
    Some(Entry { id, fields })
}

/// A bulk or simple string, moved out of the reply.
fn into_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// `[id, [field, value, ...]]`, moved out of the reply (a read's entries are not copied).
fn into_entry(v: Value) -> Option<Entry> {
    let Value::Array(parts) = v else { return None };
    let mut parts = parts.into_iter();
    let id = String::from_utf8(into_bytes(parts.next()?)?).ok()?;
    let fields = match parts.next()? {
        Value::Array(kv) => {
            let mut fields = Vec::with_capacity(kv.len() / 2);
            let mut kv = kv.into_iter();
            while let (Some(k), Some(v)) = (kv.next(), kv.next()) {
                if let (Some(k), Some(v)) = (into_bytes(k), into_bytes(v)) {
                    fields.push((k, v));
                }
            }
            fields
        }
        Value::Map(kv) => kv
            .into_iter()
            .filter_map(|(k, v)| Some((into_bytes(k)?, into_bytes(v)?)))
            .collect(),
        _ => Vec::new(),
    };
    Some(Entry { id, fields })
}

/// XREADGROUP's (or XREAD's) reply: `[[stream, [entry…]]]`, or nil.
pub(super) fn parse_read(v: Value) -> Vec<Entry> {
    let stream = match v {
        Value::Array(s) => s.into_iter().next(),
        Value::Map(m) => m.into_iter().next().map(|(k, v)| Value::Array(vec![k, v])),
        _ => return Vec::new(),
    };
    let entries = match stream {
        Some(Value::Array(stream)) => stream.into_iter().nth(1),
        _ => None,
    };
    match entries {
        Some(Value::Array(entries)) => entries.into_iter().filter_map(into_entry).collect(),
        _ => Vec::new(),
    }
}

/// XAUTOCLAIM's reply: `[cursor, [entry], [deleted ids]]`.
pub(super) fn parse_autoclaim(v: Value) -> Option<Entry> {
    let Value::Array(parts) = v else { return None };
    let Value::Array(entries) = parts.get(1)? else {
        return None;
    };
    entries.first().and_then(parse_entry)
}

/// The delivery count in XPENDING's extended reply: `[[id, consumer, idle, count]]`.
pub(super) fn parse_pending_count(v: Value) -> Option<u32> {
    let Value::Array(rows) = v else { return None };
    let Value::Array(row) = rows.first()? else {
        return None;
    };
    as_u64(row.get(3)?).and_then(|n| u32::try_from(n).ok())
}

/// The ids in XPENDING's extended reply.
pub(super) fn pending_ids(v: Value) -> Vec<String> {
    pending_counts(v).into_iter().map(|(id, _)| id).collect()
}

/// The ids of the rows of an extended `XPENDING` reply, with how many times each was
/// delivered.
pub(super) fn pending_counts(v: Value) -> Vec<(String, u64)> {
    let Value::Array(rows) = v else {
        return Vec::new();
    };
    rows.iter()
        .filter_map(|row| match row {
            Value::Array(r) => Some((
                as_string(r.first()?)?,
                r.get(3).and_then(as_u64).unwrap_or(1),
            )),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(&str, &[u8])]) -> Entry {
        Entry {
            id: "1-0".into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
                .collect(),
        }
    }

    #[test]
    fn malformed_entries_say_why() {
        assert_eq!(
            decode::<u32>(&entry(&[("codec", b"json"), ("body", b"7")])),
            Ok(7)
        );
        let seven = postcard::to_stdvec(&7u32).unwrap();
        assert_eq!(
            decode::<u32>(&entry(&[("codec", b"postcard"), ("body", &seven)])),
            Ok(7)
        );
        let why = |e: Entry| decode::<u32>(&e).unwrap_err();
        assert!(why(entry(&[("codec", b"pickle"), ("body", b"7")])).contains("unknown codec"));
        assert!(why(entry(&[("codec", b"postcard"), ("body", b"")])).contains("does not decode"));
        let huge = vec![0xff; 12];
        assert!(why(entry(&[("codec", b"postcard"), ("body", &huge)])).contains("does not decode"));
        assert!(why(entry(&[("codec", b"json")])).contains("no body"));
        assert!(why(entry(&[("body", b"\"seven\"")])).contains("does not decode"));
    }

    #[test]
    fn replies_parse_and_garbage_does_not_panic() {
        let e = Value::Array(vec![
            Value::BulkString(b"5-1".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"body".to_vec()),
                Value::BulkString(b"1".to_vec()),
            ]),
        ]);
        let read = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"q".to_vec()),
            Value::Array(vec![e.clone(), Value::Nil, e.clone()]),
        ])]);
        let ids: Vec<String> = parse_read(read).into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["5-1", "5-1"]);
        let claim = Value::Array(vec![
            Value::BulkString(b"0-0".to_vec()),
            Value::Array(vec![e]),
            Value::Array(vec![]),
        ]);
        assert_eq!(parse_autoclaim(claim).unwrap().id, "5-1");
        for garbage in [Value::Nil, Value::Int(3), Value::Array(vec![Value::Nil])] {
            assert!(parse_read(garbage.clone()).is_empty());
            assert!(parse_autoclaim(garbage.clone()).is_none());
            assert!(parse_pending_count(garbage).is_none());
        }
    }
}
