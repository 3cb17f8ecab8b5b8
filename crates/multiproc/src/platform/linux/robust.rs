//! The kernel's robust futex list: a thread's list of the lock words it holds, which the
//! kernel walks when the thread ends (exits, is killed, or its process execs) to mark each
//! word it still holds `FUTEX_OWNER_DIED` and wake a waiter. A waiter learns of the death at
//! once and exactly, with no polling and no confusion by a reused thread id.
//!
//! A thread has one list, and glibc owns it: glibc registers it (`set_robust_list`) for every
//! thread it creates and links its robust `pthread_mutex_t`s into it. Our locks join the same
//! list as glibc's own entries do, so that both keep working: an entry is a `{prev, next}`
//! pair whose lock word lies `-futex_offset` bytes before `next`, `prev` points at the `next`
//! (or the list head) that points to the entry, and a change is announced in
//! `list_op_pending` first, so that the kernel also covers a thread that dies in the middle
//! of one. That layout is glibc's on 64-bit Linux (`futex_offset` −32); a thread whose list is
//! missing or laid out otherwise (another libc, a thread not made by glibc) links nothing, and
//! its locks fall back to the liveness checks of their waiters.
//!
//! Everything here runs on the thread that owns the list; glibc changes it on that thread
//! only too, and the kernel reads it only once the thread has stopped.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering, compiler_fence};

/// Where a list entry's `next` sits after the lock word: 32 bytes, as in glibc's
/// `pthread_mutex_t` (`__lock` at 0, `__list.__prev` at 24, `__list.__next` at 32).
pub(crate) const NEXT_AFTER_WORD: usize = 32;

/// The kernel's `struct robust_list_head`.
#[repr(C)]
struct Head {
    /// The first entry's `next`, or the head itself when the list is empty.
    list: usize,
    futex_offset: isize,
    list_op_pending: usize,
}

/// An entry of the list, inside a lock that lives in shared memory: written by the thread
/// that holds the lock (and by glibc on that thread), read by the kernel.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct RobustEntry {
    prev: AtomicUsize,
    next: AtomicUsize,
}

thread_local! {
    /// This thread's list head, if it can be joined: 0 not looked up yet, 1 not joinable.
    static HEAD: Cell<usize> = const { Cell::new(0) };
}

/// This thread's list head, if glibc registered one we can join.
fn head() -> Option<*mut Head> {
    let cached = HEAD.with(Cell::get);
    if cached > 1 {
        return Some(cached as *mut Head);
    }
    if cached == 1 {
        return None;
    }
    let found = look_up_head();
    HEAD.with(|h| h.set(found.map_or(1, |p| p as usize)));
    found
}

#[cold]
fn look_up_head() -> Option<*mut Head> {
    let mut head: *mut Head = std::ptr::null_mut();
    let mut len: libc::size_t = 0;
    // SAFETY: get_robust_list(0, …) writes this thread's head pointer and its length into
    // the two live locals.
    let r = unsafe { libc::syscall(libc::SYS_get_robust_list, 0, &raw mut head, &raw mut len) };
    if r != 0 || head.is_null() || len != std::mem::size_of::<Head>() {
        return None;
    }
    // SAFETY: the kernel says `head` is this thread's registered head (in glibc's thread
    // descriptor, which lives as long as the thread).
    let offset = unsafe { (*head).futex_offset };
    (offset == -(NEXT_AFTER_WORD as isize)).then_some(head)
}

/// Whether the calling thread's locks are known to the kernel (its robust list can be
/// joined).
#[cfg(test)]
pub(crate) fn robust_list_available() -> bool {
    head().is_some()
}

/// The `{prev, next}` pair that a list pointer (a `next`, or the head's `list`) points into.
fn pair_of(next_field: usize) -> *mut RobustEntry {
    ((next_field & !1) - std::mem::offset_of!(RobustEntry, next)) as *mut RobustEntry
}

/// Announces that the calling thread is about to take or give back the lock that `entry`
/// belongs to: a thread that dies from here on has the kernel look at that lock too. Returns
/// whether the thread has a list (if not, the other calls do nothing).
pub(crate) fn robust_pending(entry: &RobustEntry) -> bool {
    let Some(head) = head() else { return false };
    compiler_fence(Ordering::SeqCst);
    // SAFETY: `head` is this thread's own head; only this thread writes it.
    unsafe { (*head).list_op_pending = entry.next.as_ptr() as usize };
    compiler_fence(Ordering::SeqCst);
    true
}

/// Ends what [`robust_pending`] announced.
pub(crate) fn robust_done() {
    let Some(head) = head() else { return };
    compiler_fence(Ordering::SeqCst);
    // SAFETY: as in `robust_pending`.
    unsafe { (*head).list_op_pending = 0 };
    compiler_fence(Ordering::SeqCst);
}

/// Puts `entry` first in the calling thread's list: it has just taken its lock, after
/// [`robust_pending`].
///
/// # Safety
/// The calling thread holds the lock whose word lies [`NEXT_AFTER_WORD`] bytes before
/// `entry.next`, `entry` is in no list, and its memory stays mapped until
/// [`robust_unlink`] (or the thread's end).
pub(crate) unsafe fn robust_link(entry: &RobustEntry) {
    let Some(head) = head() else { return };
    let me = entry.next.as_ptr() as usize;
    // SAFETY: `head` is this thread's own; the list's entries are mapped (each linked
    // under this function's contract, or glibc's own mutexes); only this thread changes
    // them. As glibc's ENQUEUE_MUTEX.
    unsafe {
        let first = (*head).list;
        // The first entry's pair, or the head seen as one (glibc keeps a word before it).
        (*pair_of(first)).prev.store(me, Ordering::Relaxed);
        entry.next.store(first, Ordering::Relaxed);
        entry
            .prev
            .store(std::ptr::addr_of!((*head).list) as usize, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        (*head).list = me;
    }
    compiler_fence(Ordering::SeqCst);
}

/// Takes `entry` out of the calling thread's list, before its lock is released (after
/// [`robust_pending`]).
///
/// # Safety
/// `entry` was linked by [`robust_link`] on this thread and not unlinked since.
pub(crate) unsafe fn robust_unlink(entry: &RobustEntry) {
    if head().is_none() {
        return;
    }
    let next = entry.next.load(Ordering::Relaxed);
    let prev = entry.prev.load(Ordering::Relaxed);
    if next == 0 || prev == 0 {
        return;
    }
    // SAFETY: the neighbours are entries of this thread's list (or its head), mapped; only
    // this thread changes them. As glibc's DEQUEUE_MUTEX.
    unsafe {
        (*pair_of(next)).prev.store(prev, Ordering::Relaxed);
        let before = pair_of(prev);
        let flag = (*before).next.load(Ordering::Relaxed) & 1;
        (*before).next.store(next | flag, Ordering::Relaxed);
    }
    compiler_fence(Ordering::SeqCst);
    entry.prev.store(0, Ordering::Relaxed);
    entry.next.store(0, Ordering::Relaxed);
}
