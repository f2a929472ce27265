//! Every task's gradient of the shared MLP layers kept factored, as layer inputs and output gradients: their Gram matrix and weighted sums without forming each task's gradient.
//!
//! A Linear layer's weight gradient over a batch is `Δᵀ A`: `A` the layer's input rows, the
//! same for every task, and `Δ` a task's gradient at the layer's output. With a hundred rows
//! and layers of a thousand units, `A` and the `Δ`s are a tenth of the gradients' size, and
//! what the weighting methods need follows from them. Inner products of two tasks' gradients
//! (weight and bias) are `<Δ_s, K Δ_t>` with `K = A Aᵀ + 1` (the all-ones matrix is the
//! bias); factoring `K = L Lᵀ` makes them the inner products of the small `Lᵀ Δ_t`, at half
//! the cost of forming `K Δ_t`. Weighted sums of gradients are `(Σ_t c_t Δ_t)ᵀ A`.
//!
//! The products are `f32` loops written for the vector units, every sum in one fixed order,
//! and the work is spread over the cores by whole items (blocks of a layer's outputs, rows of
//! a sum) whose results are combined in item order, so the results are the same on every
//! machine and with any number of threads.

use std::mem::MaybeUninit;
use std::ops::Range;

use crate::finite::all_finite;
use crate::mtl::pair_sums::{add_block, add_pairs, BlockAt, BLOCK};
use crate::mtl::product::{product, Product, Strip, PANEL};
use crate::mtl::weighting::linalg::LANES;
use crate::parallel;
use crate::simd::with_avx2;

/// Rows of a formed gradient's piece come in multiples of this: the product kernels' smallest
/// block of rows before single ones.
const ROW_BLOCK: usize = 4;
/// Weight values per piece of a formed gradient: pieces of about equal work, so the cores get
/// even shares however wide the layers are, each with enough rows that a column strip of the
/// inputs, copied once, serves many.
const PIECE_VALUES: usize = 64 * 1024;
/// Output columns of a layer per item of [`FactoredGradients::gram`]: enough items to share
/// among the cores, each long enough to be worth its scratch space.
const GRAM_COLUMNS: usize = 128;

/// Every task's gradient of the shared MLP layers, kept as the layers' input rows and each
/// task's gradient at every layer's output: the weight gradient of layer `l` for task `t` is
/// `Δ_t,lᵀ A_l` and its bias gradient `Σ_rows Δ_t,l`.
#[derive(Clone, Debug, PartialEq)]
pub struct FactoredGradients {
    /// Each Linear layer's (inputs, outputs), in order.
    layers: Vec<(usize, usize)>,
    /// Rows of the batch.
    rows: usize,
    /// `inputs[l]`: layer `l`'s input rows, `[rows, inputs]` row-major.
    inputs: Vec<Vec<f32>>,
    /// `deltas[t][l]`: task `t`'s gradient at layer `l`'s output, `[rows, outputs]` row-major.
    deltas: Vec<Vec<Vec<f32>>>,
    /// Values of one task's gradient.
    len: usize,
    /// Whether every value is known to be finite without reading it again (see
    /// [`known_finite`](Self::known_finite)).
    known_finite: bool,
    /// Values of room left after every formed gradient (see
    /// [`with_room_after`](Self::with_room_after)).
    room_after: usize,
}

/// Output rows `first..first + bias.len()` of one layer's gradient, formed alone into memory
/// not yet written.
struct Piece<'a> {
    layer: usize,
    first: usize,
    /// Their weight rows, `[bias.len(), inputs]` row-major.
    weight: &'a mut [MaybeUninit<f32>],
    bias: &'a mut [MaybeUninit<f32>],
}

/// The gradients at the layers' outputs that a formed gradient is the gradient of.
#[derive(Clone, Copy)]
enum Outputs<'a> {
    /// One task's `Δ`.
    Task(usize),
    /// `Σ_t c_t Δ_t`, summed in `f64` in task order and rounded once.
    Weighted(&'a [f64]),
}

/// A layer's `K = A Aᵀ + 1`, factored with its rows in pivot order: `K[order][:, order] = L Lᵀ`.
struct Factor {
    /// `Lᵀ`, `[rank, rows]` row-major; row `c` is zero before column `c`.
    upper: Vec<f32>,
    /// The row of `K` (and of `Δ`) at each position of the pivot order.
    order: Vec<usize>,
    /// Columns of `L`: `K`'s rank, as far as `f64` can tell.
    rank: usize,
}

impl FactoredGradients {
    /// `layers`: each Linear layer's (inputs, outputs) in order; `rows`: the batch's rows;
    /// `inputs[l]`: `[rows, layers[l].0]` row-major; `deltas[t][l]`: `[rows, layers[l].1]`
    /// row-major. Refuses, naming the layer and task, any length that does not fit.
    pub fn new(
        layers: Vec<(usize, usize)>,
        rows: usize,
        inputs: Vec<Vec<f32>>,
        deltas: Vec<Vec<Vec<f32>>>,
    ) -> Result<Self, String> {
        // `checked_mul` so that absurd sizes are refused rather than wrapped into a match.
        let fits = |len: usize, width: usize| Some(len) == rows.checked_mul(width);
        if inputs.len() != layers.len() {
            return Err(format!(
                "inputs for {} layers, but there are {} layers",
                inputs.len(),
                layers.len()
            ));
        }
        for (l, (a, &(width, _))) in inputs.iter().zip(&layers).enumerate() {
            if !fits(a.len(), width) {
                return Err(format!(
                    "layer {l}'s inputs hold {} values, not {rows} rows × {width} inputs",
                    a.len()
                ));
            }
        }
        for (t, task) in deltas.iter().enumerate() {
            if task.len() != layers.len() {
                return Err(format!(
                    "task {t} has deltas for {} layers, but there are {} layers",
                    task.len(),
                    layers.len()
                ));
            }
            for (l, (d, &(_, width))) in task.iter().zip(&layers).enumerate() {
                if !fits(d.len(), width) {
                    return Err(format!(
                        "task {t}'s deltas at layer {l} hold {} values, \
                         not {rows} rows × {width} outputs",
                        d.len()
                    ));
                }
            }
        }
        let len = layers
            .iter()
            .try_fold(0usize, |len, &(i, o)| {
                len.checked_add(o.checked_mul(i.checked_add(1)?)?)
            })
            .ok_or("the layers have more parameters than memory can address")?;
        Ok(Self {
            layers,
            rows,
            inputs,
            deltas,
            len,
            known_finite: false,
            room_after: 0,
        })
    }

    /// These gradients, marked as known to be finite: every chunk they were joined from was
    /// checked as it arrived (`reduce::check_chunk`), and a scale of at most one keeps them so.
    /// [`first_non_finite`](Self::first_non_finite) then answers without reading the step's
    /// several megabytes a second time; debug builds read them anyway, to hold the caller to it.
    pub fn known_finite(mut self) -> Self {
        self.known_finite = true;
        self
    }

    /// These gradients, leaving room for `values` more after every gradient they form
    /// ([`combine`](Self::combine), [`materialize`](Self::materialize)): a caller that extends
    /// one, as the update appends the heads' gradients to the shared direction, then does so
    /// in place rather than by moving its megabytes.
    pub fn with_room_after(mut self, values: usize) -> Self {
        self.room_after = values;
        self
    }

    /// Number of tasks.
    pub fn tasks(&self) -> usize {
        self.deltas.len()
    }

    /// Rows of the batch.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values of one task's gradient: `Σ_l outputs_l · inputs_l + outputs_l`.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether a task's gradient has no values (no layers, or only empty ones).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first task whose gradient may hold a NaN or an infinity: the first with a
    /// non-finite delta, or task 0 when an input is non-finite (the inputs are every task's).
    /// `None` when all are finite; the other results mean nothing otherwise.
    pub fn first_non_finite(&self) -> Option<usize> {
        if self.known_finite {
            debug_assert_eq!(
                self.find_non_finite(),
                None,
                "gradients marked finite are not"
            );
            return None;
        }
        self.find_non_finite()
    }

    /// [`first_non_finite`](Self::first_non_finite), from the values.
    fn find_non_finite(&self) -> Option<usize> {
        // Every layer's inputs, then every task's deltas, each a part checked on its own and
        // the parts spread over the cores: a step's are several megabytes.
        let parts: Vec<(Option<usize>, &[f32])> = (self.inputs.iter().map(|a| (None, &a[..])))
            .chain(
                (self.deltas.iter().enumerate())
                    .flat_map(|(t, task)| task.iter().map(move |d| (Some(t), &d[..]))),
            )
            .collect();
        let values = parts.iter().map(|(_, p)| p.len()).sum();
        let finite = parallel::map(&parts, parallel::worth_it(values), |(_, p)| all_finite(p));
        let (owner, _) = parts.iter().zip(finite).find(|(_, finite)| !finite)?.0;
        // The inputs are every task's: task 0 is the first they spoil.
        (self.tasks() > 0).then_some(owner.unwrap_or(0))
    }

    /// The Gram matrix of the tasks' gradients (tasks × tasks, symmetric): the inner
    /// products, in `f64`, of the `Lᵀ Δ_t` formed in `f32`. An entry's error is that of `f32`
    /// sums over the rows, relative to `‖g_s‖ ‖g_t‖`.
    pub fn gram(&self) -> Vec<Vec<f64>> {
        let outputs: usize = self.layers.iter().map(|&(_, o)| o).sum();
        let multiply_adds = [self.tasks(), self.rows, self.rows, outputs]
            .into_iter()
            .fold(1usize, usize::saturating_mul);
        self.gram_spread(parallel::worth_it(multiply_adds))
    }

    /// `Σ_t coefficients[t] · g_t`, in the layout of [`materialize`](Self::materialize):
    /// `S_l = Σ_t c_t Δ_t,l` summed in `f64` and rounded once, then `S_lᵀ A_l` in `f32`, each
    /// piece of the result summing the part of `S_l` it needs, so that `S` is never held whole.
    ///
    /// # Panics
    /// When there is not one coefficient per task.
    pub fn combine(&self, coefficients: &[f64]) -> Vec<f32> {
        assert_eq!(coefficients.len(), self.tasks(), "one coefficient per task");
        self.form(Outputs::Weighted(coefficients), self.worth_forming_spread())
    }

    /// Task `task`'s gradient: for each layer in order, the weight `[outputs, inputs]`
    /// row-major, then the bias `[outputs]`.
    pub fn materialize(&self, task: usize) -> Vec<f32> {
        self.form(Outputs::Task(task), self.worth_forming_spread())
    }

    /// Value `index` of task `task`'s gradient (in the layout of
    /// [`materialize`](Self::materialize)), summed in `f64` over the rows: one value without
    /// forming the gradient, for saying where a combination went wrong.
    ///
    /// # Panics
    /// When `task` or `index` is out of range.
    pub fn value(&self, task: usize, index: usize) -> f64 {
        let mut at = index;
        for (layer, &(inputs, outputs)) in self.layers.iter().enumerate() {
            let delta = &self.deltas[task][layer];
            let column = |o: usize| (0..self.rows).map(move |r| f64::from(delta[r * outputs + o]));
            if at < outputs * inputs {
                let (o, i) = (at / inputs, at % inputs);
                let a = &self.inputs[layer];
                return (column(o).enumerate())
                    .map(|(r, d)| d * f64::from(a[r * inputs + i]))
                    .sum();
            }
            at -= outputs * inputs;
            if at < outputs {
                return column(at).sum();
            }
            at -= outputs;
        }
        panic!("value {index} of a gradient of {} values", self.len);
    }

    /// [`gram`](Self::gram), spread over the cores when `spread`.
    ///
    /// The items are blocks of [`GRAM_COLUMNS`] output columns of a layer. Each forms every
    /// task's `Lᵀ Δ_t` a tile of columns at a time, takes their inner products while they are
    /// still in cache, and moves on, so no task's `Lᵀ Δ_t` is ever held whole; the blocks'
    /// Gram matrices are added in block order.
    fn gram_spread(&self, spread: bool) -> Vec<Vec<f64>> {
        let tasks = self.tasks();
        let kernels: Vec<Vec<f64>> = (self.inputs.iter().zip(&self.layers))
            .map(|(a, &(width, _))| kernel(a, self.rows, width, spread))
            .collect();
        let factors = parallel::map(&kernels, spread, |k| factor(k, self.rows));
        let blocks: Vec<(usize, Range<usize>)> = (self.layers.iter().enumerate())
            .flat_map(|(layer, &(_, outputs))| {
                (0..outputs)
                    .step_by(GRAM_COLUMNS)
                    .map(move |start| (layer, start..(start + GRAM_COLUMNS).min(outputs)))
            })
            .collect();
        let partials = parallel::map(&blocks, spread, |(layer, columns)| {
            let f = &factors[*layer];
            let mut strip = Strip::new(self.rows);
            // Every task's `Lᵀ Δ_t` in the tile of columns at hand.
            let mut lt_deltas = vec![vec![0.0; f.rank * PANEL]; tasks];
            let mut lanes = vec![[0.0; LANES]; tasks * tasks];
            for start in columns.clone().step_by(PANEL) {
                let cols = start..(start + PANEL).min(columns.end);
                for (lt_delta, task) in lt_deltas.iter_mut().zip(&self.deltas) {
                    let p = Product {
                        left: &f.upper,
                        right: &task[*layer],
                        order: &f.order,
                        upper: true,
                        m: f.rank,
                        n: self.layers[*layer].1,
                    };
                    product(p, cols.clone(), &mut strip, lt_delta);
                }
                pair_lanes(&lt_deltas, f.rank * cols.len(), &mut lanes);
            }
            lanes
        });
        let mut gram = vec![vec![0.0; tasks]; tasks];
        for lanes in partials {
            for s in 0..tasks {
                for t in s..tasks {
                    gram[s][t] += lanes[s * tasks + t].iter().sum::<f64>();
                    gram[t][s] = gram[s][t];
                }
            }
        }
        gram
    }

    /// Whether forming a gradient, a multiply-add per weight and row, is worth spreading.
    fn worth_forming_spread(&self) -> bool {
        parallel::worth_it(self.rows.saturating_mul(self.len))
    }

    /// The gradient whose gradients at the layers' outputs are `source`'s, piece by piece, the
    /// pieces spread over the cores when `spread`. Every value is written once, by its piece:
    /// the gradient's megabytes are never zeroed first.
    fn form(&self, source: Outputs, spread: bool) -> Vec<f32> {
        let mut gradient = Vec::with_capacity(self.len.saturating_add(self.room_after));
        let mut pieces = Vec::new();
        let mut rest = &mut gradient.spare_capacity_mut()[..self.len];
        for (layer, &(inputs, outputs)) in self.layers.iter().enumerate() {
            let (mut weight, tail) = rest.split_at_mut(outputs * inputs);
            let (bias, tail) = tail.split_at_mut(outputs);
            rest = tail;
            let per_piece = (PIECE_VALUES / inputs.max(1) / ROW_BLOCK * ROW_BLOCK).max(ROW_BLOCK);
            for (index, bias) in bias.chunks_mut(per_piece).enumerate() {
                let (piece_weight, tail) =
                    std::mem::take(&mut weight).split_at_mut(bias.len() * inputs);
                weight = tail;
                pieces.push(Piece {
                    layer,
                    first: index * per_piece,
                    weight: piece_weight,
                    bias,
                });
            }
        }
        parallel::for_each_mut(&mut pieces, spread, |_, piece| {
            self.form_piece(source, piece)
        });
        // SAFETY: the pieces cover the first `len` values, each its weight rows whole (the
        // product writes every entry of its output) and its biases.
        unsafe { gradient.set_len(self.len) };
        gradient
    }

    /// Forms one piece: `sᵀ` of the piece's outputs (`s` the gradient at the layer's outputs
    /// that `source` says), then their weight rows `sᵀ A` and biases `Σ_rows s` (in `f64`).
    fn form_piece(&self, source: Outputs, piece: &mut Piece) {
        let (inputs, width) = self.layers[piece.layer];
        let (rows, count) = (self.rows, piece.bias.len());
        let mut transposed = vec![0.0f32; count * rows];
        let columns = piece.first..piece.first + count;
        match source {
            Outputs::Task(task) => {
                let s = &self.deltas[task][piece.layer];
                for r in 0..rows {
                    let row = &s[r * width..][columns.clone()];
                    for (o, &x) in row.iter().enumerate() {
                        transposed[o * rows + r] = x;
                    }
                }
            }
            Outputs::Weighted(coefficients) => {
                let mut sums = vec![0.0f64; count];
                for r in 0..rows {
                    let at = r * width + piece.first;
                    weighted_sum(coefficients, &self.deltas, piece.layer, at, &mut sums);
                    for (o, &x) in sums.iter().enumerate() {
                        transposed[o * rows + r] = x as f32;
                    }
                }
            }
        }
        let order: Vec<usize> = (0..rows).collect();
        let st_a = Product {
            left: &transposed,
            right: &self.inputs[piece.layer],
            order: &order,
            upper: false,
            m: count,
            n: inputs,
        };
        let mut strip = Strip::new(rows);
        product(st_a, 0..inputs, &mut strip, piece.weight);
        for (o, bias) in piece.bias.iter_mut().enumerate() {
            let s = &transposed[o * rows..][..rows];
            bias.write(s.iter().map(|&x| f64::from(x)).sum::<f64>() as f32);
        }
    }
}

/// `K = A Aᵀ + 1` of a layer's input rows, `[rows, rows]` row-major, each entry summed in
/// `f64` (the products of `f32` are exact), the pairs of rows a block of 4 × 4 at a time.
fn kernel(inputs: &[f32], rows: usize, width: usize, spread: bool) -> Vec<f64> {
    let wide: Vec<f64> = inputs.iter().map(|&x| f64::from(x)).collect();
    let row = |i: usize| &wide[i * width..][..width];
    let blocks: Vec<(usize, usize)> = (0..rows)
        .step_by(BLOCK)
        .flat_map(|s| (s..rows).step_by(BLOCK).map(move |t| (s, t)))
        .collect();
    // Every pair of the block has a place; a block past the last row repeats it, and what
    // it sums for it is dropped below.
    let at: BlockAt = std::array::from_fn(|a| std::array::from_fn(|b| Some(a * BLOCK + b)));
    let sums = parallel::map(&blocks, spread, |&(s, t)| {
        let mut lanes = [[0.0; LANES]; BLOCK * BLOCK];
        add_block(
            std::array::from_fn(|a| row((s + a).min(rows - 1))),
            std::array::from_fn(|b| row((t + b).min(rows - 1))),
            &at,
            &mut lanes,
        );
        lanes
    });
    let mut k = vec![0.0; rows * rows];
    for (&(s, t), lanes) in blocks.iter().zip(&sums) {
        for (at, lanes) in lanes.iter().enumerate() {
            let (i, j) = (s + at / BLOCK, t + at % BLOCK);
            if i <= j && j < rows {
                let value = lanes.iter().sum::<f64>() + 1.0;
                k[i * rows + j] = value;
                k[j * rows + i] = value;
            }
        }
    }
    k
}

/// Values of every task's `Lᵀ Δ_t` whose pairs [`pair_lanes`] takes together: 4 KiB a task, so
/// that ten tasks' stay in the first level of cache while all their pairs pass over them.
const PAIR_PART: usize = 512;

/// Adds the products of the first `len` values of every pair `s ≤ t` of `q` to the lanes
/// `lanes[s * q.len() + t]`, [`PAIR_PART`] values at a time. A part is a whole number of
/// lanes, so each lane sums its values in the same order as over the whole length at once.
fn pair_lanes(q: &[Vec<f64>], len: usize, lanes: &mut [[f64; LANES]]) {
    for part in (0..len).step_by(PAIR_PART) {
        let rows: Vec<&[f64]> = q
            .iter()
            .map(|q| &q[part..(part + PAIR_PART).min(len)])
            .collect();
        add_pairs(&rows, lanes);
    }
}

with_avx2! {
    /// Factors a kernel `k` (`[rows, rows]`, symmetric positive semi-definite) by Cholesky with
    /// diagonal pivoting in `f64`, stopping where what is left is rounding: `K`'s rank is at most
    /// the layer's inputs + 1, below the rows when the layer is narrow or rows repeat, and the
    /// pivoting keeps such a `K` from dividing by a pivot that is only rounding.
    fn factor(k: &[f64], rows: usize) -> Factor {
        // Row `c < rank` becomes column `c` of `L` (from the diagonal on); the rows below hold
        // what is left of `K` once those columns are taken out, kept whole (both triangles, the
        // same bits in each) so that every update is a contiguous row.
        let mut a = k.to_vec();
        let mut order: Vec<usize> = (0..rows).collect();
        let diagonal = |a: &[f64], i: usize| a[i * rows + i];
        let largest = (0..rows).map(|i| diagonal(&a, i)).fold(0.0, f64::max);
        let floor = rows as f64 * f64::EPSILON * largest;
        let mut rank = 0;
        while rank < rows {
            let c = rank;
            let pivot = (c..rows)
                .max_by(|&x, &y| diagonal(&a, x).total_cmp(&diagonal(&a, y)))
                .expect("a row is left");
            let d = diagonal(&a, pivot);
            // A NaN comes from non-finite inputs: nothing useful is left either.
            if d.is_nan() || d <= floor {
                break;
            }
            for j in 0..rows {
                a.swap(c * rows + j, pivot * rows + j);
            }
            for i in 0..rows {
                a.swap(i * rows + c, i * rows + pivot);
            }
            order.swap(c, pivot);
            let root = d.sqrt();
            let (done, rest) = a.split_at_mut((c + 1) * rows);
            let column = &mut done[c * rows..];
            column[c] = root;
            for x in &mut column[c + 1..] {
                *x /= root;
            }
            for row in rest.chunks_exact_mut(rows) {
                let l = row[c] / root;
                for (x, &y) in row[c + 1..].iter_mut().zip(&column[c + 1..]) {
                    *x -= l * y;
                }
            }
            rank += 1;
        }
        let upper = a[..rank * rows]
            .chunks_exact(rows.max(1))
            .enumerate()
            .flat_map(|(c, row)| {
                row.iter()
                    .enumerate()
                    .map(move |(i, &x)| if i < c { 0.0 } else { x as f32 })
            })
            .collect();
        Factor { upper, order, rank }
    }
}

with_avx2! {
    /// Sets `sums` to `Σ_t coefficients[t] · deltas[t][layer][at..]`, summed in `f64` in task
    /// order.
    fn weighted_sum(
        coefficients: &[f64],
        deltas: &[Vec<Vec<f32>>],
        layer: usize,
        at: usize,
        sums: &mut [f64],
    ) {
        sums.fill(0.0);
        for (&c, task) in coefficients.iter().zip(deltas) {
            for (s, &x) in sums.iter_mut().zip(&task[layer][at..]) {
                *s += c * f64::from(x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Random factored gradients, inputs and deltas uniform in [-1, 1).
    fn random(
        layers: &[(usize, usize)],
        rows: usize,
        tasks: usize,
        seed: u64,
    ) -> FactoredGradients {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut values =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let inputs = layers.iter().map(|&(i, _)| values(rows * i)).collect();
        let deltas = (0..tasks)
            .map(|_| layers.iter().map(|&(_, o)| values(rows * o)).collect())
            .collect();
        FactoredGradients::new(layers.to_vec(), rows, inputs, deltas).unwrap()
    }

    /// Task `t`'s gradient straight from its definition, in `f64`: weight `[o][k] = Σ_r
    /// Δ[r][o] A[r][k]` and bias `[o] = Σ_r Δ[r][o]`, layer after layer.
    fn reference(g: &FactoredGradients, t: usize) -> Vec<f64> {
        let mut gradient = Vec::new();
        for (l, &(inputs, outputs)) in g.layers.iter().enumerate() {
            let (a, delta) = (&g.inputs[l], &g.deltas[t][l]);
            let d = |r: usize, o: usize| f64::from(delta[r * outputs + o]);
            for o in 0..outputs {
                for k in 0..inputs {
                    gradient.push(
                        (0..g.rows)
                            .map(|r| d(r, o) * f64::from(a[r * inputs + k]))
                            .sum(),
                    );
                }
            }
            gradient.extend((0..outputs).map(|o| (0..g.rows).map(|r| d(r, o)).sum::<f64>()));
        }
        gradient
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn distance(a: &[f32], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(&x, y)| (f64::from(x) - y).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    #[test]
    fn a_tiny_gradient_is_laid_out_weight_then_bias_layer_by_layer() {
        // Layer 0 (2 inputs → 1 output), rows A = [1 2; 3 4], Δ = [5; 6]:
        //   weight = Δᵀ A = [5·1 + 6·3, 5·2 + 6·4] = [23, 34], bias = 5 + 6 = 11.
        // Layer 1 (1 input → 2 outputs), rows A = [7; 8], Δ = [1 -1; 2 0]:
        //   weight = Δᵀ A = [1·7 + 2·8; -1·7 + 0·8] = [23; -7], bias = [1 + 2, -1 + 0] = [3, -1].
        let g = FactoredGradients::new(
            vec![(2, 1), (1, 2)],
            2,
            vec![vec![1.0, 2.0, 3.0, 4.0], vec![7.0, 8.0]],
            vec![vec![vec![5.0, 6.0], vec![1.0, -1.0, 2.0, 0.0]]],
        )
        .unwrap();
        assert_eq!(
            (g.tasks(), g.rows(), g.len(), g.is_empty()),
            (1, 2, 7, false)
        );
        assert_eq!(
            g.materialize(0),
            vec![23.0, 34.0, 11.0, 23.0, -7.0, 3.0, -1.0]
        );
        let values: Vec<f64> = (0..g.len()).map(|i| g.value(0, i)).collect();
        assert_eq!(values, [23.0, 34.0, 11.0, 23.0, -7.0, 3.0, -1.0]);
        // 23² + 34² + 11² + 23² + 7² + 3² + 1² = 2394, to rounding (the factoring takes roots).
        let gram = g.gram();
        assert!((gram[0][0] - 2394.0).abs() <= 1e-6 * 2394.0, "{gram:?}");
        assert_eq!(
            g.combine(&[-0.5]),
            vec![-11.5, -17.0, -5.5, -11.5, 3.5, -1.5, 0.5]
        );
    }

    #[test]
    fn gram_and_combine_match_the_gradients_formed_in_f64() {
        // Layer 0 has 3 inputs for 9 rows, so its K has rank 4 of 9; 19 and 6 outputs are not
        // whole tiles, 9 rows not whole row blocks.
        let g = random(&[(3, 19), (19, 6)], 9, 3, 7);
        let expected: Vec<Vec<f64>> = (0..3).map(|t| reference(&g, t)).collect();
        for (t, e) in expected.iter().enumerate() {
            let formed = g.materialize(t);
            assert_eq!(formed.len(), g.len());
            assert!(distance(&formed, e) <= 1e-6 * dot(e, e).sqrt(), "task {t}");
        }
        let gram = g.gram();
        for s in 0..3 {
            for t in 0..3 {
                let exact = dot(&expected[s], &expected[t]);
                let scale =
                    (dot(&expected[s], &expected[s]) * dot(&expected[t], &expected[t])).sqrt();
                assert!(
                    (gram[s][t] - exact).abs() <= 1e-6 * scale,
                    "G[{s}][{t}] = {} but the gradients give {exact}",
                    gram[s][t]
                );
                assert_eq!(gram[s][t].to_bits(), gram[t][s].to_bits());
            }
        }
        let c = [0.5, -2.0, 3.0];
        let sum: Vec<f64> = (0..g.len())
            .map(|i| (0..3).map(|t| c[t] * expected[t][i]).sum())
            .collect();
        assert!(distance(&g.combine(&c), &sum) <= 1e-6 * dot(&sum, &sum).sqrt());
        for t in 0..3 {
            let mut one = [0.0; 3];
            one[t] = 1.0;
            assert_eq!(g.combine(&one), g.materialize(t), "task {t} alone");
        }
    }

    #[test]
    fn a_narrow_layers_kernel_is_factored_to_its_rank() {
        // 3 inputs and the bias make K = [A 1][A 1]ᵀ of rank 4 for 9 rows.
        let g = random(&[(3, 2)], 9, 1, 5);
        let k = kernel(&g.inputs[0], 9, 3, false);
        let f = factor(&k, 9);
        assert_eq!(f.rank, 4);
        let largest = k.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        for i in 0..9 {
            for j in 0..9 {
                let l = |row: usize, c: usize| f64::from(f.upper[c * 9 + row]);
                let rebuilt: f64 = (0..f.rank).map(|c| l(i, c) * l(j, c)).sum();
                let exact = k[f.order[i] * 9 + f.order[j]];
                assert!((rebuilt - exact).abs() <= 1e-6 * largest, "K[{i}][{j}]");
            }
        }
    }

    #[test]
    fn spreading_over_the_cores_changes_no_bit() {
        // Several pieces per layer, and more tasks than cores.
        let g = random(&[(300, 70), (70, 45)], 10, 5, 11);
        assert_eq!(g.gram_spread(true), g.gram_spread(false));
        let c = [0.3, -1.0, 2.5, 0.0, 1e-3];
        for source in [Outputs::Weighted(&c), Outputs::Task(3)] {
            assert_eq!(g.form(source, true), g.form(source, false));
        }
    }

    #[test]
    fn a_combination_is_the_gradient_of_the_weighted_sum_rounded_once() {
        // The first layer is two pieces (64 of its 80 outputs, then 16), so the second sums
        // its part of `S` from inside the rows.
        let g = random(&[(1000, 80), (80, 45)], 10, 4, 12);
        let c = [0.7, -1.3, 1e-2, 2.0];
        // `S = Σ_t c_t Δ_t` by its definition, one task of its own.
        let s: Vec<Vec<f32>> = (0..g.layers.len())
            .map(|l| {
                (0..g.deltas[0][l].len())
                    .map(|i| {
                        let sum = (c.iter().zip(&g.deltas))
                            .fold(0.0f64, |sum, (&c, task)| sum + c * f64::from(task[l][i]));
                        sum as f32
                    })
                    .collect()
            })
            .collect();
        let alone =
            FactoredGradients::new(g.layers.clone(), g.rows, g.inputs.clone(), vec![s]).unwrap();
        assert_eq!(g.combine(&c), alone.materialize(0));
    }

    #[test]
    fn formed_gradients_leave_the_room_asked_for() {
        let g = random(&[(3, 4), (4, 2)], 5, 2, 13).with_room_after(7);
        for formed in [g.combine(&[1.0, -2.0]), g.materialize(1)] {
            assert_eq!(formed.len(), g.len());
            assert!(formed.capacity() >= g.len() + 7, "{}", formed.capacity());
        }
    }

    #[test]
    fn an_empty_batch_has_zero_gradients() {
        let g =
            FactoredGradients::new(vec![(2, 3)], 0, vec![vec![]], vec![vec![vec![]]; 2]).unwrap();
        assert_eq!(g.materialize(1), vec![0.0; 9]);
        assert_eq!(g.combine(&[1.0, 2.0]), vec![0.0; 9]);
        assert_eq!(g.gram(), vec![vec![0.0; 2]; 2]);
    }

    #[test]
    fn wrong_lengths_are_refused_naming_the_layer_and_task() {
        let layers = vec![(2, 3), (3, 1)];
        let inputs = || vec![vec![0.0; 4], vec![0.0; 6]];
        let task = || vec![vec![0.0; 6], vec![0.0; 2]];
        let new = |inputs, deltas| FactoredGradients::new(layers.clone(), 2, inputs, deltas);
        assert!(new(inputs(), vec![task(); 3]).is_ok());
        let error = new(vec![vec![0.0; 4], vec![0.0; 5]], vec![task()]).unwrap_err();
        assert!(error.contains("layer 1's inputs hold 5 values"), "{error}");
        let error = new(vec![vec![0.0; 4]], vec![task()]).unwrap_err();
        assert!(error.contains("inputs for 1 layers"), "{error}");
        let mut deltas = vec![task(); 3];
        deltas[2][1].push(0.0);
        let error = new(inputs(), deltas).unwrap_err();
        assert!(
            error.contains("task 2's deltas at layer 1 hold 3 values"),
            "{error}"
        );
        let error = new(inputs(), vec![task(), vec![vec![0.0; 6]]]).unwrap_err();
        assert!(error.contains("task 1 has deltas for 1 layers"), "{error}");
    }

    #[test]
    fn the_first_task_with_a_non_finite_value_is_named() {
        let mut g = random(&[(4, 3), (3, 2)], 5, 4, 3);
        assert_eq!(g.first_non_finite(), None);
        g.deltas[2][1][7] = f32::NAN;
        g.deltas[3][0][0] = f32::INFINITY;
        assert_eq!(g.first_non_finite(), Some(2));
        g.inputs[1][0] = f32::NEG_INFINITY;
        assert_eq!(g.first_non_finite(), Some(0), "the inputs are every task's");
    }

    #[test]
    fn gradients_known_finite_are_finite_without_a_look() {
        let g = random(&[(4, 3), (3, 2)], 5, 4, 3).known_finite();
        assert_eq!(g.first_non_finite(), None);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "gradients marked finite are not")]
    fn a_wrong_mark_of_finiteness_is_caught_in_debug_builds() {
        let mut g = random(&[(4, 3), (3, 2)], 5, 4, 3);
        g.deltas[1][0][2] = f32::NAN;
        g.known_finite().first_non_finite();
    }

    #[test]
    #[should_panic(expected = "one coefficient per task")]
    fn combine_wants_one_coefficient_per_task() {
        random(&[(2, 2)], 3, 2, 1).combine(&[1.0]);
    }
}
