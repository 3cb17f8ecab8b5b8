//! Targets: how a function of the parent is named to the child.
//!
//! A target is a zero-sized function type (a `fn` item or a closure that captures nothing).
//! For each (target, argument, result) triple the compiler makes one [`trampoline`]; its address
//! relative to [`anchor`] is the same in every process running the same executable, so the
//! parent sends that offset and the child adds its own anchor address back.

use std::os::fd::OwnedFd;

use serde::de::DeserializeOwned;
use serde::ser::{self, Impossible, Serialize};

use crate::share;

/// What a trampoline produced.
pub(crate) enum TargetOutcome {
    /// The target returned; `failed` if the value is a `Result::Err`.
    Returned {
        value: Vec<u8>,
        fds: Vec<OwnedFd>,
        failed: bool,
    },
    /// The arguments could not be decoded, or the result encoded.
    Broken(String),
}

/// The shape of every trampoline.
pub(crate) type Trampoline = fn(&[u8], Vec<OwnedFd>) -> TargetOutcome;

/// The fixed point targets are measured from.
#[inline(never)]
pub(crate) fn anchor() {
    std::hint::black_box(());
}

/// A second fixed function: its distance from [`anchor`] is part of the build fingerprint.
#[inline(never)]
pub(crate) fn probe() -> u8 {
    std::hint::black_box(7)
}

/// The distance of a function at `addr` from this process's [`anchor`].
pub(crate) fn anchor_offset(addr: usize) -> isize {
    (addr as isize).wrapping_sub(anchor as fn() as usize as isize)
}

/// The address at `offset` from this process's [`anchor`].
pub(crate) fn at_anchor_offset(offset: isize) -> usize {
    (anchor as fn() as usize as isize).wrapping_add(offset) as usize
}

/// Fails to compile unless `F` is zero-sized: a fn item or a closure that captures nothing.
pub(crate) const fn assert_zero_sized<F>() {
    const {
        assert!(
            size_of::<F>() == 0,
            "a process or pool target must be a fn item or a closure that captures nothing"
        )
    };
}

/// The target of zero-sized type `F`, made from nothing.
///
/// # Safety
/// `F` was checked with [`assert_zero_sized`] where its trampoline was named (the pool's
/// chunk trampolines call this too).
pub(crate) unsafe fn conjure<F>() -> F {
    // SAFETY: `F` is zero-sized, so the read touches no memory (a dangling pointer is non-null
    // and aligned, all a zero-sized read needs); and the only types implementing `Fn` that
    // safe code can name and that are zero-sized are fn items and closures whose captures are
    // all zero-sized: creating one creates no bytes and upholds no invariant.
    unsafe { std::ptr::NonNull::<F>::dangling().as_ptr().read() }
}

/// The offset of the trampoline for target type `F` with argument `A` and result `R`.
pub(crate) fn offset_of<F, A, R>(_target: &F) -> isize
where
    F: Fn(A) -> R + Copy + 'static,
    A: DeserializeOwned,
    R: Serialize,
{
    assert_zero_sized::<F>();
    let t: Trampoline = trampoline::<F, A, R>;
    anchor_offset(t as usize)
}

/// The trampoline at `offset` from this process's anchor.
///
/// # Safety
/// `offset` must come from [`offset_of`] in a process running the same executable (checked by
/// the build fingerprint before this is called).
pub(crate) unsafe fn resolve(offset: isize) -> Trampoline {
    let addr = at_anchor_offset(offset);
    // SAFETY: by the caller's guarantee `addr` is the address of a function of type Trampoline
    // in this very executable image, which is mapped at the same relative position.
    unsafe { std::mem::transmute::<usize, Trampoline>(addr) }
}

fn trampoline<F, A, R>(args: &[u8], fds: Vec<OwnedFd>) -> TargetOutcome
where
    F: Fn(A) -> R + Copy + 'static,
    A: DeserializeOwned,
    R: Serialize,
{
    let args: A = match share::decode("process arguments", args, fds) {
        Ok(a) => a,
        Err(e) => return TargetOutcome::Broken(e.to_string()),
    };
    // SAFETY: `offset_of`, the only place naming this trampoline, checked `F`.
    let target: F = unsafe { conjure() };
    let result = target(args);
    let failed = is_err_result(&result);
    let mut value = Vec::new();
    match share::encode_into("process result", &result, &mut value) {
        Ok(fds) => TargetOutcome::Returned { value, fds, failed },
        Err(e) => TargetOutcome::Broken(e.to_string()),
    }
}

/// Whether `value` serializes as `Result::Err` (serde names it so): such a target "failed"
/// and its process exits with code 1, as a Python target that raised.
pub(crate) fn is_err_result<T: Serialize + ?Sized>(value: &T) -> bool {
    matches!(value.serialize(ErrProbe), Err(Probe::IsErr))
}

#[derive(Debug)]
enum Probe {
    IsErr,
    Other,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("probe")
    }
}
impl std::error::Error for Probe {}
impl ser::Error for Probe {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Probe::Other
    }
}

/// A serializer that only answers "is the top-level value `Result::Err`?".
struct ErrProbe;

macro_rules! not_err {
    ($($name:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $name(self, $(_: $arg),*) -> Result<(), Probe> { Err(Probe::Other) })*
    };
}

impl ser::Serializer for ErrProbe {
    type Ok = ();
    type Error = Probe;
    type SerializeSeq = Impossible<(), Probe>;
    type SerializeTuple = Impossible<(), Probe>;
    type SerializeTupleStruct = Impossible<(), Probe>;
    type SerializeTupleVariant = Impossible<(), Probe>;
    type SerializeMap = Impossible<(), Probe>;
    type SerializeStruct = Impossible<(), Probe>;
    type SerializeStructVariant = Impossible<(), Probe>;

    not_err!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<(), Probe> {
        Err(Probe::Other)
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<(), Probe> {
        Err(Probe::Other)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        _: u32,
        variant: &'static str,
        _: &T,
    ) -> Result<(), Probe> {
        Err(if name == "Result" && variant == "Err" {
            Probe::IsErr
        } else {
            Probe::Other
        })
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Probe> {
        Err(Probe::Other)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Probe> {
        Err(Probe::Other)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Probe> {
        Err(Probe::Other)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Probe> {
        Err(Probe::Other)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Probe> {
        Err(Probe::Other)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Probe> {
        Err(Probe::Other)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Probe> {
        Err(Probe::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn err_results_are_recognised() {
        assert!(is_err_result(&Err::<u8, String>("no".into())));
        assert!(!is_err_result(&Ok::<u8, String>(1)));
        assert!(!is_err_result(&5u32));
        assert!(!is_err_result(&()));
        assert!(!is_err_result(&Some(Err::<u8, u8>(1))));
    }

    fn double(x: u32) -> u32 {
        x * 2
    }

    #[test]
    fn offsets_resolve_to_a_working_trampoline() {
        let offset = offset_of(&double);
        // SAFETY: the offset was made in this very process.
        let trampoline = unsafe { resolve(offset) };
        let mut args = Vec::new();
        share::encode_into("test", &21u32, &mut args).unwrap();
        match trampoline(&args, Vec::new()) {
            TargetOutcome::Returned { value, failed, .. } => {
                assert!(!failed);
                assert_eq!(
                    share::decode::<u32>("test", &value, Vec::new()).unwrap(),
                    42
                );
            }
            TargetOutcome::Broken(e) => panic!("{e}"),
        }
        let closure = |(a, b): (i32, i32)| a - b;
        assert_ne!(offset_of(&closure), offset);
    }
}
