//! `Value<T>` and `Array<T>`: plain data in shared memory, with a lock (Python's
//! `multiprocessing.Value`/`Array`), and `RawValue`/`RawArray` without one.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::shm::{Layout, Shared};
use crate::sync::raw_lock::{Acquired, RawLock};
use crate::sync::{LockResult, OwnerDied};

/// # Layout
///
/// | field       | meaning                                                   |
/// |-------------|-----------------------------------------------------------|
/// | `elem_size` | `size_of::<T>()`, checked when another process maps it    |
/// | `len`       | number of elements                                        |
/// | `raw`       | 1 for `RawValue`/`RawArray` (never mixed with the others) |
/// | `lock`      | the lock of `Value`/`Array` (unused by the raw forms)     |
/// | then        | the elements, at the next multiple of 64 bytes            |
#[repr(C)]
pub(crate) struct CellsLayout {
    magic: AtomicU32,
    elem_size: AtomicU32,
    len: AtomicU64,
    raw: AtomicU32,
    _reserved: AtomicU32,
    lock: RawLock,
}

// SAFETY: repr(C) of atomics, magic first, valid all-zero, accessed only through `&`.
unsafe impl Layout for CellsLayout {
    const MAGIC: u32 = u32::from_le_bytes(*b"VAL1");
    const WHAT: &'static str = "value";

    fn held_here(&self) -> bool {
        self.lock.held_in_this_process()
    }
}

/// Where the elements start within the extra bytes: at the first cache line boundary after
/// the layout (64 bytes from the segment start), so any `T` up to 64-byte alignment is
/// aligned (mappings are page-aligned).
const DATA_OFFSET: usize =
    std::mem::size_of::<CellsLayout>().next_multiple_of(64) - std::mem::size_of::<CellsLayout>();

/// `len` elements of `T` in a shared segment.
struct Cells<T> {
    shared: Shared<CellsLayout>,
    len: usize,
    _elem: PhantomData<T>,
}

impl<T> Clone for Cells<T> {
    fn clone(&self) -> Self {
        Cells {
            shared: self.shared.clone(),
            len: self.len,
            _elem: PhantomData,
        }
    }
}

impl<T: Pod> Cells<T> {
    fn create(values: &[T], raw: bool) -> Result<Self> {
        if std::mem::align_of::<T>() > 64 {
            return Err(Error::invalid(
                CellsLayout::WHAT,
                "element alignment above 64 bytes",
            ));
        }
        let bytes: &[u8] = bytemuck::cast_slice(values);
        let shared = Shared::create(DATA_OFFSET + bytes.len(), |l: &CellsLayout, extra| {
            l.elem_size
                .store(std::mem::size_of::<T>() as u32, Ordering::Relaxed);
            l.len.store(values.len() as u64, Ordering::Relaxed);
            l.raw.store(u32::from(raw), Ordering::Relaxed);
            // SAFETY: the segment has DATA_OFFSET + bytes.len() extra bytes, nobody else sees
            // it yet, and `bytes` is a separate allocation.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), extra.add(DATA_OFFSET), bytes.len())
            };
        })?;
        Ok(Cells {
            shared,
            len: values.len(),
            _elem: PhantomData,
        })
    }

    fn from_shared(shared: Shared<CellsLayout>, raw: bool) -> std::result::Result<Self, String> {
        let l = shared.layout();
        if l.raw.load(Ordering::Relaxed) != u32::from(raw) {
            return Err(
                "value: a locked value cannot be received as a raw one, nor the reverse".into(),
            );
        }
        let size = l.elem_size.load(Ordering::Relaxed) as usize;
        let len = l.len.load(Ordering::Relaxed);
        if size != std::mem::size_of::<T>() {
            return Err(format!(
                "value: element of {size} bytes received where {} were expected",
                std::mem::size_of::<T>()
            ));
        }
        let fits = usize::try_from(len)
            .ok()
            .and_then(|n| n.checked_mul(size))
            .and_then(|b| b.checked_add(DATA_OFFSET))
            .is_some_and(|b| b <= shared.extra_len());
        if !fits {
            return Err(format!(
                "value: {len} elements do not fit the shared segment"
            ));
        }
        Ok(Cells {
            shared,
            len: len as usize,
            _elem: PhantomData,
        })
    }

    fn data(&self) -> *mut T {
        // SAFETY: the segment holds DATA_OFFSET + len * size_of::<T>() extra bytes (checked at
        // creation and when mapped), 64-byte aligned from a page-aligned start.
        unsafe { self.shared.extra_ptr().add(DATA_OFFSET).cast() }
    }

    fn lock(&self) -> LockResult<ValueGuard<'_, [T]>> {
        let raw = &self.shared.layout().lock;
        let how = raw
            .lock_deadline(None)
            .expect("a wait without deadline ends with the lock");
        let guard = ValueGuard {
            lock: raw,
            data: std::ptr::slice_from_raw_parts_mut(self.data(), self.len),
            _not_send: PhantomData,
        };
        match how {
            Acquired::Clean => Ok(guard),
            Acquired::OwnerDied { pid } => Err(OwnerDied::new(guard, CellsLayout::WHAT, pid)),
        }
    }

    /// The guard of a locked read or write; a takeover from a dead owner is not an error
    /// here (plain data has no invariant to break), as in CPython's `.value`.
    fn locked(&self) -> ValueGuard<'_, [T]> {
        self.lock().unwrap_or_else(OwnerDied::into_inner)
    }

    fn bytes_atomic(&self) -> &[AtomicU8] {
        // SAFETY: the elements' bytes lie in the mapping (see `data`); AtomicU8 has the size
        // and alignment of u8, and every access to these bytes is atomic or under the lock.
        unsafe {
            std::slice::from_raw_parts(
                self.data().cast::<AtomicU8>(),
                self.len * std::mem::size_of::<T>(),
            )
        }
    }

    /// Reads element `i` without the lock: byte-wise atomic, so a concurrent writer may
    /// leave it torn (any bytes are a valid `T`).
    fn load_relaxed(&self, i: usize) -> T {
        let size = std::mem::size_of::<T>();
        let mut out = T::zeroed();
        let dst = bytemuck::bytes_of_mut(&mut out);
        for (d, s) in dst.iter_mut().zip(&self.bytes_atomic()[i * size..]) {
            *d = s.load(Ordering::Relaxed);
        }
        out
    }

    fn store_relaxed(&self, i: usize, value: T) {
        let size = std::mem::size_of::<T>();
        for (s, d) in bytemuck::bytes_of(&value)
            .iter()
            .zip(&self.bytes_atomic()[i * size..])
        {
            d.store(*s, Ordering::Relaxed);
        }
    }
}

impl<T> Serialize for Cells<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.shared.serialize(s)
    }
}

impl<T: Pod> Cells<T> {
    fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
        raw: bool,
        single: bool,
    ) -> std::result::Result<Self, D::Error> {
        let shared = Shared::deserialize(d)?;
        let cells = Cells::from_shared(shared, raw).map_err(crate::share::handle_error_de)?;
        if single && cells.len != 1 {
            return Err(crate::share::handle_error_de(format!(
                "value: an array of {} received where a single value was expected",
                cells.len
            )));
        }
        Ok(cells)
    }
}

macro_rules! deserialize_cells {
    ($ty:ident, raw: $raw:expr, single: $single:expr) => {
        impl<'de, T: Pod> Deserialize<'de> for $ty<T> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                Ok($ty {
                    cells: Cells::deserialize(d, $raw, $single)?,
                })
            }
        }
    };
}

deserialize_cells!(Value, raw: false, single: true);
deserialize_cells!(Array, raw: false, single: false);
deserialize_cells!(RawValue, raw: true, single: true);
deserialize_cells!(RawArray, raw: true, single: false);

/// Holds the lock of a [`Value`] or [`Array`] and gives access to its data; dropping it
/// releases the lock.
#[must_use = "the lock is released when the guard is dropped"]
pub struct ValueGuard<'a, T: ?Sized> {
    lock: &'a RawLock,
    data: *mut T,
    _not_send: PhantomData<(&'a mut T, *const ())>,
}

impl<'a, T> ValueGuard<'a, [T]> {
    fn first(self) -> ValueGuard<'a, T> {
        let g = ValueGuard {
            lock: self.lock,
            data: self.data.cast::<T>(),
            _not_send: PhantomData,
        };
        std::mem::forget(self);
        g
    }
}

impl<T: ?Sized> Deref for ValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the data lies in a live mapping, and while this thread holds the lock every
        // other locked access waits; unlocked access exists only for the raw types, which
        // never share a segment with a guarded one.
        unsafe { &*self.data }
    }
}

impl<T: ?Sized> DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`; the guard is borrowed mutably, so this is the only reference.
        unsafe { &mut *self.data }
    }
}

impl<T: ?Sized> Drop for ValueGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: a guard exists only while this thread holds the lock.
        unsafe { self.lock.unlock() };
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

/// A `T` in shared memory with a lock (Python's `multiprocessing.Value`). `get`/`set` take
/// the lock for the copy; [`get_lock`](Self::get_lock) holds it across a read-modify-write.
///
/// `T` is plain data ([`bytemuck::Pod`]: integers, floats, arrays and `#[repr(C)]` structs of
/// them).
///
/// # Examples
///
/// ```
/// use multiproc::{Process, Value};
///
/// fn add_one(counter: Value<u64>) {
///     *counter.get_lock().unwrap() += 1;
/// }
///
/// let counter = Value::new(0u64)?;
/// let mut kids: Vec<_> = (0..4)
///     .map(|_| Process::new(add_one, counter.clone()).start())
///     .collect::<Result<_, _>>()?;
/// for k in &mut kids {
///     k.join()?;
/// }
/// assert_eq!(counter.get(), 4);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Serialize)]
#[serde(transparent)]
pub struct Value<T> {
    cells: Cells<T>,
}

impl<T: Pod> Value<T> {
    /// A new shared value.
    ///
    /// # Errors
    /// If the shared memory cannot be created.
    pub fn new(value: T) -> Result<Value<T>> {
        Ok(Value {
            cells: Cells::create(std::slice::from_ref(&value), false)?,
        })
    }

    /// The value (read under the lock).
    pub fn get(&self) -> T {
        self.cells.locked()[0]
    }

    /// Replaces the value (under the lock).
    pub fn set(&self, value: T) {
        self.cells.locked()[0] = value;
    }

    /// Takes the lock and gives access to the value until the guard drops.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if the lock was taken over from a dead owner.
    pub fn get_lock(&self) -> LockResult<ValueGuard<'_, T>> {
        self.cells
            .lock()
            .map(ValueGuard::first)
            .map_err(|e| e.map(ValueGuard::first))
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Value").field(&self.get()).finish()
    }
}

/// A fixed-length array of `T` in shared memory with a lock (Python's
/// `multiprocessing.Array`).
///
/// # Examples
///
/// ```
/// let squares = multiproc::Array::new(&[0u32; 4])?;
/// for i in 0..4 {
///     squares.set(i, (i * i) as u32);
/// }
/// assert_eq!(squares.to_vec(), vec![0, 1, 4, 9]);
/// squares.get_lock().unwrap().reverse();
/// assert_eq!(squares.get(0), 9);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Serialize)]
#[serde(transparent)]
pub struct Array<T> {
    cells: Cells<T>,
}

impl<T: Pod> Array<T> {
    /// A new shared array holding a copy of `values`.
    ///
    /// # Errors
    /// If the shared memory cannot be created.
    pub fn new(values: &[T]) -> Result<Array<T>> {
        Ok(Array {
            cells: Cells::create(values, false)?,
        })
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.cells.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.cells.len == 0
    }

    /// Element `i` (read under the lock).
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn get(&self, i: usize) -> T {
        self.cells.locked()[i]
    }

    /// Sets element `i` (under the lock).
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn set(&self, i: usize, value: T) {
        self.cells.locked()[i] = value;
    }

    /// A copy of all elements (under the lock).
    pub fn to_vec(&self) -> Vec<T> {
        self.cells.locked().to_vec()
    }

    /// Takes the lock and gives access to the elements until the guard drops.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if the lock was taken over from a dead owner.
    pub fn get_lock(&self) -> LockResult<ValueGuard<'_, [T]>> {
        self.cells.lock()
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Array").field(&self.to_vec()).finish()
    }
}

/// A `T` in shared memory without a lock (Python's `RawValue`, or `Value(..., lock=False)`).
///
/// Reads and writes are byte-wise atomic: a read racing a write may see a mix of old and new
/// bytes (any bytes are a valid `T`), never undefined behaviour. Use [`Value`] when that
/// matters.
///
/// # Examples
///
/// ```
/// let flag = multiproc::RawValue::new(7i32)?;
/// flag.set(8);
/// assert_eq!(flag.get(), 8);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Serialize)]
#[serde(transparent)]
pub struct RawValue<T> {
    cells: Cells<T>,
}

impl<T: Pod> RawValue<T> {
    /// A new shared value.
    ///
    /// # Errors
    /// If the shared memory cannot be created.
    pub fn new(value: T) -> Result<RawValue<T>> {
        Ok(RawValue {
            cells: Cells::create(std::slice::from_ref(&value), true)?,
        })
    }

    /// The value, without locking.
    pub fn get(&self) -> T {
        self.cells.load_relaxed(0)
    }

    /// Replaces the value, without locking.
    pub fn set(&self, value: T) {
        self.cells.store_relaxed(0, value)
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for RawValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RawValue").field(&self.get()).finish()
    }
}

/// A fixed-length array of `T` in shared memory without a lock (Python's `RawArray`); element
/// reads and writes are byte-wise atomic, as for [`RawValue`].
///
/// # Examples
///
/// ```
/// let a = multiproc::RawArray::new(&[1u8, 2, 3])?;
/// a.set(0, 9);
/// assert_eq!(a.to_vec(), vec![9, 2, 3]);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Serialize)]
#[serde(transparent)]
pub struct RawArray<T> {
    cells: Cells<T>,
}

impl<T: Pod> RawArray<T> {
    /// A new shared array holding a copy of `values`.
    ///
    /// # Errors
    /// If the shared memory cannot be created.
    pub fn new(values: &[T]) -> Result<RawArray<T>> {
        Ok(RawArray {
            cells: Cells::create(values, true)?,
        })
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.cells.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.cells.len == 0
    }

    /// Element `i`, without locking.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn get(&self, i: usize) -> T {
        assert!(
            i < self.len(),
            "index {i} out of range for length {}",
            self.len()
        );
        self.cells.load_relaxed(i)
    }

    /// Sets element `i`, without locking.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn set(&self, i: usize, value: T) {
        assert!(
            i < self.len(),
            "index {i} out of range for length {}",
            self.len()
        );
        self.cells.store_relaxed(i, value)
    }

    /// A copy of all elements, without locking.
    pub fn to_vec(&self) -> Vec<T> {
        (0..self.len())
            .map(|i| self.cells.load_relaxed(i))
            .collect()
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for RawArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RawArray").field(&self.to_vec()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_received_as_another_type_is_refused() {
        let v = Value::new(7u32).unwrap();
        let mut buf = Vec::new();
        let fds = crate::share::encode_into("test", &v, &mut buf).unwrap();
        let err = crate::share::decode::<Value<u64>>("test", &buf, fds).unwrap_err();
        assert!(err.to_string().contains("element of 4 bytes"), "{err}");
        let fds = crate::share::encode_into("test", &v, &mut buf).unwrap();
        let err = crate::share::decode::<RawValue<u32>>("test", &buf[buf.len() / 2..], fds);
        assert!(err.is_err());
    }
}
