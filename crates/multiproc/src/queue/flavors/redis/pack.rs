//! Commands as the broker reads them (RESP: an array of bulk strings), packed by hand for
//! the commands written for each item (a put's XADD, a broker pool's task records): one
//! allocation of the exact size, where redis-rs's `Cmd` makes several.

/// The command `args`, packed.
pub(crate) fn pack(args: &[&[u8]]) -> Vec<u8> {
    let size = 1
        + digits(args.len())
        + 2
        + args
            .iter()
            .map(|a| 1 + digits(a.len()) + 2 + a.len() + 2)
            .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.push(b'*');
    decimal(&mut out, args.len());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        decimal(&mut out, arg.len());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// How many decimal digits `n` has.
fn digits(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Appends `n` in decimal.
fn decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::pack;

    fn by_redis(args: &[Vec<u8>]) -> Vec<u8> {
        let mut cmd = redis::cmd(std::str::from_utf8(&args[0]).unwrap());
        for a in &args[1..] {
            cmd.arg(a.as_slice());
        }
        cmd.get_packed_command()
    }

    #[test]
    fn a_command_is_packed_as_redis_packs_it() {
        let args: Vec<Vec<u8>> = vec![b"XADD".to_vec(), b"q".to_vec(), b"*".to_vec(), vec![]];
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        assert_eq!(
            pack(&refs),
            b"*4\r\n$4\r\nXADD\r\n$1\r\nq\r\n$1\r\n*\r\n$0\r\n\r\n"
        );
        assert_eq!(pack(&refs), by_redis(&args));
    }

    proptest! {
        #[test]
        fn any_arguments_are_packed_as_redis_packs_them(
            rest in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..12),
        ) {
            let mut args = vec![b"SET".to_vec()];
            args.extend(rest);
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let packed = pack(&refs);
            prop_assert_eq!(packed.len(), packed.capacity());
            prop_assert_eq!(packed, by_redis(&args));
        }
    }
}
