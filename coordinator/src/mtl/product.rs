//! The `f32` matrix product behind the factored gradients, summed in registers by one kernel per instruction set (AVX-512, AVX2 with FMA, portable), every kernel giving the same bits.
//!
//! Every entry of a product is its own sum over the inner index, in order, one fused
//! multiply-add at a time. A kernel only chooses how many entries it keeps in registers at once
//! (how many rows of `left`, how wide a vector), never the order of an entry's sum, so the
//! widest kernel the CPU has gives the bits of the portable one.

use std::mem::MaybeUninit;
use std::ops::Range;

/// Columns of one packed row of a strip: one AVX-512 register, two AVX2 ones.
const TILE: usize = 16;
/// Tiles a kernel forms side by side at most: the AVX-512 kernel's two registers a row.
const MAX_TILES: usize = 2;
/// Columns the widest kernel forms at once: callers that cut a product by columns cut it in
/// multiples of this, so that no kernel pads a narrow cut.
pub(crate) const PANEL: usize = MAX_TILES * TILE;

/// What a product's entries are stored as: `f32`, widened to `f64`, or written into memory
/// not yet initialized (a result the product fills whole, so never zeroed first).
pub(crate) trait Entry: Copy {
    /// The entry holding the sum `sum`.
    fn of(sum: f32) -> Self;
}

impl Entry for f32 {
    #[inline(always)]
    fn of(sum: f32) -> Self {
        sum
    }
}

impl Entry for f64 {
    #[inline(always)]
    fn of(sum: f32) -> Self {
        f64::from(sum)
    }
}

impl Entry for MaybeUninit<f32> {
    #[inline(always)]
    fn of(sum: f32) -> Self {
        MaybeUninit::new(sum)
    }
}

/// One row of a tile of columns, packed for a product: a cache line, aligned as one, so that
/// no vector load of it straddles two lines (an allocator's 16-byte alignment made every other
/// load do so, and the products about 2.5 times slower, by where the heap happened to place
/// the strip).
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct TileRow([f32; TILE]);

/// Scratch space for [`product`]: a panel of `right`'s columns, packed a tile at a time, which
/// stays in cache while every row of `left` passes over it. Allocate one per thread and reuse
/// it across products with the same inner length.
pub(crate) struct Strip(Vec<TileRow>);

impl Strip {
    /// Room for products whose `inner` (the rows of `right`) is at most `inner`.
    pub(crate) fn new(inner: usize) -> Strip {
        Strip(vec![TileRow::default(); MAX_TILES * inner])
    }
}

/// The product `left · right[order]` of `f32` matrices, row-major: `left` is `[m, inner]` and
/// `right` `n` wide, its row `order[j]` taken as the `j`-th (`inner = order.len()`). When
/// `upper`, row `i` of `left` is zero before column `i` and those products are skipped.
#[derive(Clone, Copy)]
pub(crate) struct Product<'a> {
    pub left: &'a [f32],
    pub right: &'a [f32],
    pub order: &'a [usize],
    pub upper: bool,
    pub m: usize,
    pub n: usize,
}

/// Columns `columns` of `p` into `out` (`[m, columns.len()]` row-major), by the widest kernel
/// the CPU has; `strip` holds at least `inner` rows.
pub(crate) fn product<T: Entry>(
    p: Product,
    columns: Range<usize>,
    strip: &mut Strip,
    out: &mut [T],
) {
    product_by(Kernel::best(), p, columns, strip, out)
}

/// A way of summing a panel of a product in registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// Any CPU: a loop of `mul_add`, 4 rows at a time, from the FMA unit where the target has
    /// one and from libm's exact `fma` elsewhere (slow, the same bits).
    Portable,
    /// x86-64 with AVX2 and FMA: 6 rows of two 8-wide registers, 12 of the 16 registers.
    Avx2,
    /// x86-64 with AVX-512: 8 rows of two 16-wide registers, 16 of the 32. Each row's
    /// coefficient is a load: with one register a row, 12 rows made as many loads as
    /// multiply-adds and ran at half the speed.
    Avx512,
}

impl Kernel {
    /// The widest kernel this CPU runs.
    pub(crate) fn best() -> Kernel {
        [Kernel::Avx512, Kernel::Avx2]
            .into_iter()
            .find(|k| k.runs())
            .unwrap_or(Kernel::Portable)
    }

    /// Every kernel this CPU runs, the portable one first.
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Kernel> {
        [Kernel::Portable, Kernel::Avx2, Kernel::Avx512]
            .into_iter()
            .filter(|k| k.runs())
            .collect()
    }

    /// Whether this CPU has the instructions the kernel is compiled for.
    fn runs(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 | Kernel::Avx512 => false,
        }
    }
}

/// [`product`] by `kernel`.
///
/// # Panics
/// When the CPU does not run `kernel`, or `strip` is too short.
pub(crate) fn product_by<T: Entry>(
    kernel: Kernel,
    p: Product,
    columns: Range<usize>,
    strip: &mut Strip,
    out: &mut [T],
) {
    assert!(
        strip.0.len() >= MAX_TILES * p.order.len(),
        "a strip for {} rows used for {}",
        strip.0.len() / MAX_TILES,
        p.order.len()
    );
    assert!(kernel.runs(), "the CPU does not run the {kernel:?} kernel");
    match kernel {
        // SAFETY (all three): the CPU runs the kernel, just checked.
        Kernel::Portable => unsafe {
            product_into::<Portable, T, 4, 1>(p, columns, &mut strip.0, out)
        },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { x86::product_avx2(p, columns, &mut strip.0, out) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { x86::product_avx512(p, columns, &mut strip.0, out) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("no x86-64 kernel runs here"),
    }
}

/// Sums `M` rows of a product over `W` tiles of columns side by side, in registers.
trait Tile {
    /// `acc[r][w][c] = Σ_j left[r][j] · strips[w][j][c]`, `j` in order, each step one fused
    /// multiply-add.
    ///
    /// # Safety
    /// The CPU has the instructions the implementation is compiled for, and every `left[r]`
    /// and `strips[w]` holds at least `strips[0].len()` values (the vector kernels read them
    /// unchecked).
    unsafe fn tile<const M: usize, const W: usize>(
        left: [&[f32]; M],
        strips: [&[TileRow]; W],
    ) -> [[[f32; TILE]; W]; M];
}

/// Columns `columns` of `p` into `out` (`[m, columns.len()]` row-major), a panel of `W` tiles
/// at a time, and in each `M` rows of `left` at a time, then four, then one.
///
/// # Safety
/// The CPU has the instructions `K` is compiled for.
#[inline(always)]
unsafe fn product_into<K: Tile, T: Entry, const M: usize, const W: usize>(
    p: Product,
    columns: Range<usize>,
    strip: &mut [TileRow],
    out: &mut [T],
) {
    let (inner, width) = (p.order.len(), columns.len());
    for start in columns.clone().step_by(W * TILE) {
        // The panel's columns of `right`, copied in `order`, a tile after another. A panel
        // narrower than the rest leaves its padding as it was: those columns are summed and
        // dropped.
        for (w, tile) in strip.chunks_exact_mut(inner.max(1)).take(W).enumerate() {
            let cols =
                (start + w * TILE).min(columns.end)..(start + (w + 1) * TILE).min(columns.end);
            for (TileRow(packed), &j) in tile.iter_mut().zip(p.order) {
                let source = &p.right[j * p.n + cols.start..j * p.n + cols.end];
                // A whole tile is a copy of known length, vector moves rather than a call.
                match <&[f32; TILE]>::try_from(source) {
                    Ok(whole) => *packed = *whole,
                    Err(_) => packed[..source.len()].copy_from_slice(source),
                }
            }
        }
        // The next panel's rows, fetched while this one is multiplied, even past `columns` (a
        // caller that cuts a product by panels asks for the next one soon): `right`'s rows
        // are far apart, each in its own page, where the CPU's own prefetching does not look.
        prefetch(
            p,
            (start + W * TILE).min(p.n)..(start + 2 * W * TILE).min(p.n),
        );
        let strips: [&[TileRow]; W] = std::array::from_fn(|w| &strip[w * inner..][..inner]);
        let panel = start - columns.start..(start + W * TILE).min(columns.end) - columns.start;
        let mut row = 0;
        // SAFETY (all three): the caller's.
        while row + M <= p.m {
            unsafe { rows::<K, T, M, W>(p, row, strips, out, width, panel.clone()) };
            row += M;
        }
        while row + 4 <= p.m {
            unsafe { rows::<K, T, 4, W>(p, row, strips, out, width, panel.clone()) };
            row += 4;
        }
        while row < p.m {
            unsafe { rows::<K, T, 1, W>(p, row, strips, out, width, panel.clone()) };
            row += 1;
        }
    }
}

/// Asks the CPU to bring columns `cols` of every row of `right` into its caches.
#[inline(always)]
fn prefetch(p: Product, cols: Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    if !cols.is_empty() {
        for &j in p.order {
            let row = &p.right[j * p.n + cols.start..j * p.n + cols.end];
            for value in row.iter().step_by(TILE).chain(row.last()) {
                // SAFETY: prefetching is a hint; the address is a value of `right`.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        (value as *const f32).cast(),
                    )
                };
            }
        }
    }
}

/// Rows `row..row + M` of `p` over a panel of `W` packed tiles, into columns `panel` of `out`,
/// whose rows are `n` apart.
///
/// # Safety
/// The CPU has the instructions `K` is compiled for.
#[inline(always)]
unsafe fn rows<K: Tile, T: Entry, const M: usize, const W: usize>(
    p: Product,
    row: usize,
    strips: [&[TileRow]; W],
    out: &mut [T],
    n: usize,
    panel: Range<usize>,
) {
    let inner = p.order.len();
    // Zeros before the block's first row's diagonal are skipped for every row of the block;
    // the later rows' zeros there add nothing (a finite `x` times zero is zero).
    let from = if p.upper { row.min(inner) } else { 0 };
    let left = std::array::from_fn(|r| &p.left[(row + r) * inner + from..(row + r + 1) * inner]);
    let strips: [&[TileRow]; W] = std::array::from_fn(|w| &strips[w][from..]);
    // Checked once a block, so that the kernels' loops check no bounds.
    let len = strips[0].len();
    assert!(left.iter().all(|row| row.len() >= len) && strips.iter().all(|s| s.len() >= len));
    // SAFETY: the CPU's, the caller's; the lengths, just checked.
    let acc = unsafe { K::tile::<M, W>(left, strips) };
    for (r, acc) in acc.into_iter().enumerate() {
        let out = &mut out[(row + r) * n + panel.start..(row + r) * n + panel.end];
        for (out, acc) in out.chunks_mut(TILE).zip(acc) {
            // A whole tile is a store of known length, vector moves rather than a call.
            match <&mut [T; TILE]>::try_from(&mut *out) {
                Ok(whole) => {
                    for (o, a) in whole.iter_mut().zip(acc) {
                        *o = T::of(a);
                    }
                }
                Err(_) => {
                    for (o, a) in out.iter_mut().zip(acc) {
                        *o = T::of(a);
                    }
                }
            }
        }
    }
}

/// The kernel for any CPU.
struct Portable;

impl Tile for Portable {
    #[inline(always)]
    unsafe fn tile<const M: usize, const W: usize>(
        left: [&[f32]; M],
        strips: [&[TileRow]; W],
    ) -> [[[f32; TILE]; W]; M] {
        let mut acc = [[[0.0f32; TILE]; W]; M];
        for j in 0..strips[0].len() {
            for (acc, left) in acc.iter_mut().zip(&left) {
                let k = left[j];
                for (acc, strip) in acc.iter_mut().zip(&strips) {
                    // Fused: one rounding per multiply-add, as the vector kernels.
                    for (a, &x) in acc.iter_mut().zip(&strip[j].0) {
                        *a = k.mul_add(x, *a);
                    }
                }
            }
        }
        acc
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The AVX2 and AVX-512 kernels, written with the vector intrinsics so that the
    //! accumulators stay in registers for the whole sum.

    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{product_into, Entry, Product, Tile, TileRow, TILE};

    /// Rows of `left` the AVX2 kernel keeps in registers, each as two 8-wide halves of one
    /// tile: 12 accumulators, two strip values and a broadcast fill 15 of the 16 registers.
    const AVX2_ROWS: usize = 6;
    /// Rows of `left` the AVX-512 kernel keeps in registers, each over two tiles: 16
    /// accumulators. 12 rows (24) ran at a quarter of the speed: the compiler spilled them.
    const AVX512_ROWS: usize = 8;

    struct Avx2;
    struct Avx512;

    impl Tile for Avx2 {
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn tile<const M: usize, const W: usize>(
            left: [&[f32]; M],
            strips: [&[TileRow]; W],
        ) -> [[[f32; TILE]; W]; M] {
            let inner = strips[0].len();
            let mut low = [[_mm256_setzero_ps(); W]; M];
            let mut high = [[_mm256_setzero_ps(); W]; M];
            for j in 0..inner {
                // SAFETY: a `TileRow` is 16 `f32`, 64-byte aligned; `j` is within every strip.
                let b: [(__m256, __m256); W] = std::array::from_fn(|w| unsafe {
                    let b = strips[w].get_unchecked(j).0.as_ptr();
                    (_mm256_load_ps(b), _mm256_load_ps(b.add(8)))
                });
                for r in 0..M {
                    // SAFETY: every row holds at least `inner` values (the caller's).
                    let k = _mm256_set1_ps(unsafe { *left[r].get_unchecked(j) });
                    for (w, &(b0, b1)) in b.iter().enumerate() {
                        low[r][w] = _mm256_fmadd_ps(k, b0, low[r][w]);
                        high[r][w] = _mm256_fmadd_ps(k, b1, high[r][w]);
                    }
                }
            }
            let mut acc = [[[0.0f32; TILE]; W]; M];
            for (r, acc) in acc.iter_mut().enumerate() {
                for (w, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: each half of a tile's row is 8 `f32`.
                    unsafe {
                        _mm256_storeu_ps(acc.as_mut_ptr(), low[r][w]);
                        _mm256_storeu_ps(acc.as_mut_ptr().add(8), high[r][w]);
                    }
                }
            }
            acc
        }
    }

    impl Tile for Avx512 {
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn tile<const M: usize, const W: usize>(
            left: [&[f32]; M],
            strips: [&[TileRow]; W],
        ) -> [[[f32; TILE]; W]; M] {
            let inner = strips[0].len();
            let mut sums = [[_mm512_setzero_ps(); W]; M];
            for j in 0..inner {
                // SAFETY: a `TileRow` is 16 `f32`, 64-byte aligned; `j` is within every strip.
                let b: [__m512; W] = std::array::from_fn(|w| unsafe {
                    _mm512_load_ps(strips[w].get_unchecked(j).0.as_ptr())
                });
                for r in 0..M {
                    // SAFETY: every row holds at least `inner` values (the caller's).
                    let k = _mm512_set1_ps(unsafe { *left[r].get_unchecked(j) });
                    for w in 0..W {
                        sums[r][w] = _mm512_fmadd_ps(k, b[w], sums[r][w]);
                    }
                }
            }
            let mut acc = [[[0.0f32; TILE]; W]; M];
            for (acc, sums) in acc.iter_mut().zip(sums) {
                for (acc, sum) in acc.iter_mut().zip(sums) {
                    // SAFETY: a tile's row is 16 `f32`.
                    unsafe { _mm512_storeu_ps(acc.as_mut_ptr(), sum) };
                }
            }
            acc
        }
    }

    /// [`super::product`] by the AVX2 kernel, a tile at a time.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn product_avx2<T: Entry>(
        p: Product,
        columns: Range<usize>,
        strip: &mut [TileRow],
        out: &mut [T],
    ) {
        // SAFETY: the caller's.
        unsafe { product_into::<Avx2, T, AVX2_ROWS, 1>(p, columns, strip, out) }
    }

    /// [`super::product`] by the AVX-512 kernel, two tiles at a time.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn product_avx512<T: Entry>(
        p: Product,
        columns: Range<usize>,
        strip: &mut [TileRow],
        out: &mut [T],
    ) {
        // SAFETY: the caller's.
        unsafe { product_into::<Avx512, T, AVX512_ROWS, 2>(p, columns, strip, out) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `left · right[order]` straight from the definition: each entry one fused multiply-add
    /// after another over the inner index, from the diagonal on when `upper`.
    fn reference(p: Product, columns: Range<usize>) -> Vec<f32> {
        let inner = p.order.len();
        let mut out = Vec::new();
        for i in 0..p.m {
            for c in columns.clone() {
                let first = if p.upper { i.min(inner) } else { 0 };
                out.push((first..inner).fold(0.0f32, |sum, j| {
                    p.left[i * inner + j].mul_add(p.right[p.order[j] * p.n + c], sum)
                }));
            }
        }
        out
    }

    /// Every kernel this CPU runs gives the bits of the definition, over row counts that
    /// leave every kind of remainder (blocks of 8 and 6, of 4, single rows), column ranges
    /// that start and end inside tiles and panels, rows taken out of order, upper-triangular
    /// or not, written out in `f32` and in `f64`.
    #[test]
    fn every_kernel_gives_the_bits_of_the_definition() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let kernels = Kernel::available();
        assert_eq!(kernels[0], Kernel::Portable);
        for (m, inner, n) in [
            (1, 1, 1),
            (5, 7, 20),
            (13, 30, 77),
            (29, 41, 130),
            (8, 3, 33),
        ] {
            let left: Vec<f32> = (0..m * inner)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let right: Vec<f32> = (0..inner * n)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let mut order: Vec<usize> = (0..inner).collect();
            order.reverse();
            order.swap(0, inner / 2);
            for upper in [false, true] {
                // Zeros below the diagonal, as an upper-triangular `left` has them.
                let left: Vec<f32> = (left.iter().enumerate())
                    .map(|(at, &x)| {
                        if upper && at % inner < at / inner {
                            0.0
                        } else {
                            x
                        }
                    })
                    .collect();
                let p = Product {
                    left: &left,
                    right: &right,
                    order: &order,
                    upper,
                    m,
                    n,
                };
                for columns in [0..n, n / 3..n, 1..(n / 2).max(1)] {
                    let expected = reference(p, columns.clone());
                    for &kernel in &kernels {
                        let mut strip = Strip::new(inner);
                        let mut narrow = vec![f32::NAN; m * columns.len()];
                        product_by(kernel, p, columns.clone(), &mut strip, &mut narrow);
                        let mut wide = vec![f64::NAN; m * columns.len()];
                        product_by(kernel, p, columns.clone(), &mut strip, &mut wide);
                        let context = format!(
                            "{kernel:?}, {m}x{inner}x{n}, upper {upper}, columns {columns:?}"
                        );
                        assert_eq!(
                            narrow.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                            expected.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                            "{context}"
                        );
                        assert!(
                            (wide.iter().zip(&expected)).all(|(&w, &e)| w == f64::from(e)),
                            "{context}: f64"
                        );
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "a strip for 3 rows used for 4")]
    fn a_strip_too_short_is_refused() {
        let (left, right, order) = (vec![1.0; 4], vec![1.0; 4], vec![0, 1, 2, 3]);
        let p = Product {
            left: &left,
            right: &right,
            order: &order,
            upper: false,
            m: 1,
            n: 1,
        };
        product(p, 0..1, &mut Strip::new(3), &mut [0.0f32]);
    }
}
