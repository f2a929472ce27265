//! Vector work of a multi-task step spread over the coordinator's cores, cut by the data and never by the number of threads, so results are the same on every machine.
//!
//! While the coordinator reduces and combines a step's gradients every worker waits for the
//! next parameters, so the cores are free; the pieces each thread takes are whole items
//! (tasks, fixed segments of a vector) whose results are combined in item order.

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
    let per_thread = items.len().div_ceil(threads);
    let (first, rest) = items.split_at(per_thread);
    thread::scope(|scope| {
        let handles: Vec<_> = rest
            .chunks(per_thread)
            .map(|group| {
                let f = &f;
                scope.spawn(move || group.iter().map(f).collect::<Vec<R>>())
            })
            .collect();
        // The calling thread takes the first group rather than waiting idle: one thread fewer
        // to start, and a core that is already awake.
        let mut results: Vec<R> = first.iter().map(&f).collect();
        for handle in handles {
            results.extend(handle.join().expect("a parallel map's thread panicked"));
        }
        results
    })
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
    let per_thread = items.len().div_ceil(threads);
    let run = |group_index: usize, group: &mut [T]| {
        for (i, item) in group.iter_mut().enumerate() {
            f(group_index * per_thread + i, item);
        }
    };
    let (first, rest) = items.split_at_mut(per_thread);
    thread::scope(|scope| {
        for (group_index, group) in rest.chunks_mut(per_thread).enumerate() {
            let run = &run;
            scope.spawn(move || run(group_index + 1, group));
        }
        // The calling thread takes the first group, as in `map`.
        run(0, first);
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
