//! Vector work of a multi-task step spread over the coordinator's cores, cut by the data and never by the number of threads, so results are the same on every machine.
//!
//! While the coordinator reduces and combines a step's gradients every worker waits for the
//! next parameters, so the cores are free; the pieces are whole items (tasks, fixed segments
//! of a vector) whose results are combined in item order. Each thread takes the next item
//! not yet taken, so a thread the system runs late (on a core the message handling or a
//! worker also wants) does fewer items instead of holding up the others with its fixed share.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;

/// Most threads one call uses: past a few, memory bandwidth is the limit.
const MAX_THREADS: usize = 8;

/// Below this many values in all, threads cost more than they save.
const MIN_PARALLEL_VALUES: usize = 1 << 16;

/// Whether work over `values` values in all is worth spreading over threads.
pub fn worth_it(values: usize) -> bool {
    values >= MIN_PARALLEL_VALUES
}

fn threads() -> usize {
    thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_THREADS)
}

/// `f` of every item, in item order; the items are spread over the cores when `parallel`.
pub fn map<T: Sync, R: Send>(items: &[T], parallel: bool, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = threads().min(items.len());
    if !parallel || threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let take = || {
        let mut done = Vec::new();
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(index) else {
                return done;
            };
            done.push((index, f(item)));
        }
    };
    let mut slots: Vec<Option<R>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    let mut place = |done: Vec<(usize, R)>| {
        for (index, result) in done {
            slots[index] = Some(result);
        }
    };
    thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(take)).collect();
        // The calling thread takes items too rather than waiting idle: one thread fewer to
        // start, and a core that is already awake.
        place(take());
        for helper in helpers {
            place(helper.join().expect("a parallel map's thread panicked"));
        }
    });
    slots
        .into_iter()
        .map(|result| result.expect("every item was taken once"))
        .collect()
}

/// Runs `f` on every item with its index, the items spread over the cores when `parallel`.
pub fn for_each_mut<T: Send>(items: &mut [T], parallel: bool, f: impl Fn(usize, &mut T) + Sync) {
    let threads = threads().min(items.len());
    if !parallel || threads <= 1 {
        items
            .iter_mut()
            .enumerate()
            .for_each(|(i, item)| f(i, item));
        return;
    }
    // Held only to take the next item, never while `f` runs.
    let queue = Mutex::new(items.iter_mut().enumerate());
    let run = || loop {
        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
        match next {
            Some((index, item)) => f(index, item),
            None => break,
        }
    };
    thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(run);
        }
        // The calling thread takes items too, as in `map`.
        run();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_item_order_whichever_thread_ran_them() {
        let items: Vec<u64> = (0..37).collect();
        for parallel in [false, true] {
            assert_eq!(
                map(&items, parallel, |x| x * x),
                items.iter().map(|x| x * x).collect::<Vec<_>>()
            );
            let mut seen = vec![0usize; 37];
            for_each_mut(&mut seen, parallel, |i, s| *s = i + 1);
            assert_eq!(seen, (1..=37).collect::<Vec<_>>());
        }
        assert!(map(&[] as &[u8], true, |x| *x).is_empty());
    }
}
