//! How the queue commands reach a broker: the authkey, and the key prefix carried in a Redis
//! URL.

use anyhow::{Context, bail};

/// The authkey: the file's bytes (a final newline removed), else `MULTIPROC_AUTHKEY`.
pub(crate) fn read_authkey(file: Option<&std::path::Path>) -> anyhow::Result<Vec<u8>> {
    if let Some(path) = file {
        let mut key = std::fs::read(path)
            .with_context(|| format!("cannot read the authkey file {}", path.display()))?;
        if key.last() == Some(&b'\n') {
            key.pop();
        }
        return Ok(key);
    }
    match std::env::var_os("MULTIPROC_AUTHKEY") {
        Some(k) => Ok(k.into_encoded_bytes()),
        None => bail!("no authkey: set MULTIPROC_AUTHKEY or pass --authkey-file"),
    }
}

/// `url` with the query parameter `prefix=PREFIX` added (before any `#fragment`), the prefix
/// percent-encoded. A URL that gives a prefix already, another one, is refused by the library.
pub(crate) fn with_prefix(url: &str, prefix: &str) -> String {
    let (head, fragment) = url.split_at(url.find('#').unwrap_or(url.len()));
    let separator = match head.find('?') {
        None => "?",
        Some(_) if head.ends_with(['?', '&']) => "",
        Some(_) => "&",
    };
    let mut encoded = String::new();
    for b in prefix.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{head}{separator}prefix={encoded}{fragment}")
}

#[cfg(test)]
mod prefix_tests {
    use super::with_prefix;

    #[test]
    fn the_prefix_goes_into_the_query_encoded_before_the_fragment() {
        assert_eq!(
            with_prefix("redis://h:6379/0", "multiproc:"),
            "redis://h:6379/0?prefix=multiproc%3A"
        );
        assert_eq!(with_prefix("redis://h/0", ""), "redis://h/0?prefix=");
        assert_eq!(
            with_prefix("redis://h/0?protocol=resp3", "a b&c"),
            "redis://h/0?protocol=resp3&prefix=a%20b%26c"
        );
        assert_eq!(
            with_prefix("rediss://h/#insecure", "{t}"),
            "rediss://h/?prefix=%7Bt%7D#insecure"
        );
        assert_eq!(with_prefix("redis://h/?", "x"), "redis://h/?prefix=x");
    }
}
