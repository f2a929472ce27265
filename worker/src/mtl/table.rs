//! Rows of a table from the worker's `--data-root`: features encoded once per experiment, the rows of each split, and each epoch's order of the training rows.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use outerloop_proto::mtl::{MtlSetup, RowBatch, RowSplit, Shared, TableData, TableSplit, TaskLoss};
use outerloop_proto::splitmix::splitmix64;
use outerloop_proto::table::{fraction_rows, SPLIT_NAMES};
use tch::{Device, Kind, Tensor};

use super::rows::{tensor, RowSource, Rows};
use crate::data::images::decode;
use crate::data::table::{Table, Values};

/// A table's rows, encoded for one experiment.
pub struct TableRows {
    /// Every row's features, row-major `[rows, width]`: numeric columns standardised (when
    /// asked) with the training rows' statistics, text columns one-hot over their levels.
    /// Empty for an image table.
    x: Vec<f32>,
    width: usize,
    /// An image table's images: each row's input, decoded when first read.
    images: Option<Images>,
    /// Each task's targets for every row.
    targets: Vec<Targets>,
    /// The rows of each split (train, val, test), ascending.
    splits: [Vec<u64>; 3],
    seed: u64,
    /// The order of the training rows in the epoch last read: consecutive batches share it.
    order: RefCell<Option<EpochOrder>>,
}

/// A permutation of the training rows: the order epoch `epoch` of stream `stream` reads them.
struct EpochOrder {
    stream: u64,
    epoch: u64,
    permutation: Vec<u32>,
}

/// The images an image column names, and those decoded so far (bytes, channel after channel).
struct Images {
    paths: Vec<PathBuf>,
    channels: u32,
    size: u32,
    decoded: RefCell<HashMap<u64, Rc<[u8]>>>,
}

impl Images {
    /// Each row's image path under `dir`: relative, inside it, and present.
    fn new(dir: &Path, column: &str, values: &Values, shared: &Shared) -> Result<Images, String> {
        let Shared::Conv4(conv) = shared else {
            return Err(format!("image column `{column}` needs conv4 shared layers"));
        };
        if conv.channels != 1 && conv.channels != 3 {
            return Err(format!(
                "images are read in 1 (grey) or 3 (RGB) channels, not {}",
                conv.channels
            ));
        }
        let Values::Text(names) = values else {
            return Err(format!(
                "image column `{column}` holds numbers, not image paths"
            ));
        };
        let paths = names
            .iter()
            .enumerate()
            .map(|(row, name)| {
                let name = name.as_deref().unwrap_or_default();
                let relative = Path::new(name);
                let inside = !name.is_empty()
                    && relative
                        .components()
                        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
                if !inside {
                    return Err(format!(
                        "row {}: image path {name:?} must be a file's path relative to the dataset's directory, without `..`",
                        row + 1
                    ));
                }
                let path = dir.join(relative);
                if !path.is_file() {
                    return Err(format!(
                        "row {}: image `{name}` is not in {}",
                        row + 1,
                        dir.display()
                    ));
                }
                Ok(path)
            })
            .collect::<Result<_, String>>()?;
        Ok(Images {
            paths,
            channels: conv.channels as u32,
            size: conv.image_size as u32,
            decoded: RefCell::new(HashMap::new()),
        })
    }

    /// The pixels of `rows`, `[rows, channels * size * size]` row-major, in [0, 1].
    fn pixels(&self, rows: &[u64]) -> Result<Vec<f32>, String> {
        let width = (self.channels * self.size * self.size) as usize;
        let mut x = Vec::with_capacity(rows.len() * width);
        let mut decoded = self.decoded.borrow_mut();
        for &row in rows {
            let bytes = match decoded.get(&row) {
                Some(bytes) => bytes.clone(),
                None => {
                    let bytes: Rc<[u8]> =
                        decode(&self.paths[row as usize], self.size, self.channels)
                            .map_err(|e| format!("row {}: {e}", row + 1))?
                            .into();
                    decoded.insert(row, bytes.clone());
                    bytes
                }
            };
            x.extend(bytes.iter().map(|&b| f32::from(b) / 255.0));
        }
        Ok(x)
    }
}

/// One task's targets: values `[rows, width]` (MSE, BCE) or class labels (cross-entropy).
enum Targets {
    Values { values: Vec<f32>, width: usize },
    Labels(Vec<i64>),
}

impl TableRows {
    /// Encodes `table` for `setup`, or says why this set-up does not fit the table (which a
    /// coordinator that checked the spec against the same manifest never sends).
    pub fn new(
        table: &Table,
        dir: &Path,
        data: &TableData,
        setup: &MtlSetup,
    ) -> Result<Self, String> {
        let column = |name: &str| {
            table
                .column(name)
                .ok_or_else(|| format!("table `{}` has no column `{name}`", data.dataset))
        };
        let splits = match &data.split {
            TableSplit::Fractions(fractions) => {
                fraction_rows(table.rows as u64, *fractions, data.seed)
            }
            TableSplit::Column(name) => match &column(name)?.values {
                Values::Text(values) => split_by_column(values)?,
                Values::Numeric(_) => {
                    return Err(format!(
                        "split column `{name}` holds numbers, not train, val and test"
                    ))
                }
            },
        };
        // Standardise with the training rows only: validation and test rows must not leak in.
        let mut width = 0;
        let mut encoded: Vec<Encoded> = Vec::new();
        for name in &data.features {
            let feature = column(name)?;
            let e = match &feature.values {
                Values::Numeric(values) => {
                    let (mean, std) = if data.standardize {
                        moments(values, &splits[0])
                    } else {
                        (0.0, 1.0)
                    };
                    Encoded::Numeric { values, mean, std }
                }
                Values::Text(_) => {
                    let codes = feature.level_codes().ok_or_else(|| {
                        format!("column `{name}` has too many distinct values to one-hot encode")
                    })?;
                    let levels = codes
                        .iter()
                        .copied()
                        .filter(|&c| c != u32::MAX)
                        .max()
                        .map_or(0, |m| m as usize + 1);
                    Encoded::OneHot { codes, levels }
                }
            };
            width += e.width();
            encoded.push(e);
        }
        let images = match &data.image_column {
            Some(name) => {
                let images = Images::new(dir, name, &column(name)?.values, &setup.shared)?;
                width = setup.shared.input();
                Some(images)
            }
            None => None,
        };
        if width != setup.shared.input() {
            return Err(format!(
                "the features of table `{}` encode to {width} inputs, the shared layers read {}",
                data.dataset,
                setup.shared.input()
            ));
        }
        let mut x = vec![
            0f32;
            if images.is_some() {
                0
            } else {
                table.rows * width
            }
        ];
        let mut offset = 0;
        for e in &encoded {
            for (row, out) in x.chunks_exact_mut(width).enumerate() {
                match e {
                    Encoded::Numeric { values, mean, std } => {
                        out[offset] = ((values[row] - mean) / std) as f32
                    }
                    Encoded::OneHot { codes, .. } => out[offset + codes[row] as usize] = 1.0,
                }
            }
            offset += e.width();
        }
        if data.targets.len() != setup.tasks.len() {
            return Err(format!(
                "table data names targets for {} tasks, the experiment has {}",
                data.targets.len(),
                setup.tasks.len()
            ));
        }
        let targets = setup
            .tasks
            .iter()
            .zip(&data.targets)
            .map(|(task, columns)| {
                let wrong = || {
                    format!(
                        "task {:?}: its head of {} outputs does not fit {:?} on {}",
                        task.name,
                        task.outputs,
                        task.loss,
                        columns.join(", ")
                    )
                };
                match task.loss {
                    TaskLoss::CrossEntropy => {
                        let [name] = columns.as_slice() else {
                            return Err(wrong());
                        };
                        let codes = column(name)?.level_codes().ok_or_else(wrong)?;
                        if codes.iter().any(|&c| c >= task.outputs) {
                            return Err(wrong());
                        }
                        Ok(Targets::Labels(codes.iter().map(|&c| c as i64).collect()))
                    }
                    TaskLoss::Mse | TaskLoss::BinaryCrossEntropy => {
                        if columns.len() != task.outputs as usize {
                            return Err(wrong());
                        }
                        let numeric = columns
                            .iter()
                            .map(|name| match &column(name)?.values {
                                Values::Numeric(v) => Ok(v),
                                Values::Text(_) => {
                                    Err(format!("target column `{name}` holds text"))
                                }
                            })
                            .collect::<Result<Vec<_>, String>>()?;
                        let values = (0..table.rows)
                            .flat_map(|row| numeric.iter().map(move |c| c[row] as f32))
                            .collect();
                        Ok(Targets::Values {
                            values,
                            width: columns.len(),
                        })
                    }
                }
            })
            .collect::<Result<_, String>>()?;
        Ok(TableRows {
            x,
            width,
            images,
            targets,
            splits,
            seed: data.seed,
            order: RefCell::new(None),
        })
    }

    /// The table's rows that positions `first .. first + count` of `split` name. Training
    /// positions run on forever, epoch after epoch, each epoch a fresh permutation of the
    /// training rows drawn from (seed, stream, epoch); held-out positions are the split's rows
    /// in order, and end with them.
    fn row_indices(&self, stream: u64, batch: &RowBatch) -> Result<Vec<u64>, String> {
        let split = match batch.split {
            RowSplit::Train => 0,
            RowSplit::Val => 1,
            RowSplit::Test => 2,
        };
        let rows = &self.splits[split];
        let n = rows.len() as u64;
        if n == 0 {
            return Err(format!(
                "the table's {} split has no rows",
                SPLIT_NAMES[split]
            ));
        }
        let positions = batch.first..batch.first + batch.count as u64;
        if split != 0 {
            if positions.end > n {
                return Err(format!(
                    "rows {} to {} of the {} split were asked for; it has {n}",
                    positions.start,
                    positions.end - 1,
                    SPLIT_NAMES[split]
                ));
            }
            return Ok(positions.map(|p| rows[p as usize]).collect());
        }
        let mut order = self.order.borrow_mut();
        Ok(positions
            .map(|p| {
                let epoch = p / n;
                let current = order
                    .as_ref()
                    .is_some_and(|o| o.stream == stream && o.epoch == epoch);
                if !current {
                    *order = Some(EpochOrder {
                        stream,
                        epoch,
                        permutation: permutation(
                            n,
                            self.seed ^ splitmix64(stream ^ splitmix64(epoch)),
                        ),
                    });
                }
                let permutation = &order.as_ref().expect("set above").permutation;
                rows[permutation[(p % n) as usize] as usize]
            })
            .collect())
    }
}

/// The rows of each split named by a column of `train`, `val` and `test`.
fn split_by_column(values: &[Option<String>]) -> Result<[Vec<u64>; 3], String> {
    let mut splits = [Vec::new(), Vec::new(), Vec::new()];
    for (row, value) in values.iter().enumerate() {
        let split = value
            .as_deref()
            .and_then(|v| SPLIT_NAMES.iter().position(|s| *s == v))
            .ok_or_else(|| {
                format!(
                    "row {} has split {value:?}, not one of train, val, test",
                    row + 1
                )
            })?;
        splits[split].push(row as u64);
    }
    Ok(splits)
}

/// A uniformly random permutation of `0..n` (Fisher–Yates), drawn from `key` alone.
fn permutation(n: u64, key: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        // 128-bit multiply-shift maps the hash to 0..=i without modulo bias worth a mention.
        let r = splitmix64(key ^ splitmix64(i));
        let j = ((r as u128 * (i as u128 + 1)) >> 64) as usize;
        order.swap(i as usize, j);
    }
    order
}

/// Mean and standard deviation (population, in `f64`, in row order) of `values` over `rows`;
/// a constant column gets a deviation of 1 so that it encodes as zeros.
fn moments(values: &[f64], rows: &[u64]) -> (f64, f64) {
    let n = rows.len().max(1) as f64;
    let mean = rows.iter().map(|&r| values[r as usize]).sum::<f64>() / n;
    let var = rows
        .iter()
        .map(|&r| (values[r as usize] - mean).powi(2))
        .sum::<f64>()
        / n;
    let std = var.sqrt();
    (mean, if std > 0.0 { std } else { 1.0 })
}

enum Encoded<'a> {
    Numeric {
        values: &'a [f64],
        mean: f64,
        std: f64,
    },
    OneHot {
        codes: Vec<u32>,
        levels: usize,
    },
}

impl Encoded<'_> {
    fn width(&self) -> usize {
        match self {
            Encoded::Numeric { .. } => 1,
            Encoded::OneHot { levels, .. } => *levels,
        }
    }
}

/// The rows `rows` of row-major `values` of `width` per row, in that order.
fn gather(values: &[f32], width: usize, rows: &[u64]) -> Vec<f32> {
    let mut picked = Vec::with_capacity(rows.len() * width);
    for &r in rows {
        let r = r as usize;
        picked.extend_from_slice(&values[r * width..(r + 1) * width]);
    }
    picked
}

impl RowSource for TableRows {
    fn rows(
        &self,
        stream: u64,
        batch: &RowBatch,
        tasks: &[usize],
        kind: Kind,
        device: Device,
    ) -> Result<Rows, String> {
        let rows = self.row_indices(stream, batch)?;
        let count = rows.len();
        let x = match &self.images {
            Some(images) => images.pixels(&rows)?,
            None => gather(&self.x, self.width, &rows),
        };
        let targets = tasks
            .iter()
            .map(|&t| match &self.targets[t] {
                Targets::Values { values, width } => tensor(
                    &gather(values, *width, &rows),
                    &[count, *width],
                    kind,
                    device,
                ),
                Targets::Labels(labels) => {
                    let picked: Vec<i64> = rows.iter().map(|&r| labels[r as usize]).collect();
                    Tensor::from_slice(&picked).to_device(device)
                }
            })
            .collect();
        Ok(Rows {
            x: tensor(&x, &[count, self.width], kind, device),
            targets,
        })
    }
}

#[cfg(test)]
mod tests {
    use outerloop_proto::model::Mlp;
    use outerloop_proto::mtl::{MtlData, MtlTask, Shared};

    use super::*;
    use crate::data::table::Column;

    /// Six rows: a numeric feature, a text feature of two levels, a regression target, a
    /// class column of three levels, two 0/1 labels and a split column.
    fn table() -> Table {
        let numeric = |name: &str, v: &[f64]| Column {
            name: name.into(),
            values: Values::Numeric(v.to_vec()),
        };
        let text = |name: &str, v: &[&str]| Column {
            name: name.into(),
            values: Values::Text(v.iter().map(|s| Some(s.to_string())).collect()),
        };
        Table {
            rows: 6,
            columns: vec![
                numeric("size", &[1.0, 3.0, 5.0, 7.0, 100.0, -100.0]),
                text("colour", &["red", "blue", "red", "red", "blue", "red"]),
                numeric("price", &[10.0, 20.0, 30.0, 40.0, 50.0, 60.0]),
                text("kind", &["b", "a", "c", "a", "b", "c"]),
                numeric("l0", &[0.0, 1.0, 0.0, 1.0, 0.0, 1.0]),
                numeric("l1", &[1.0, 1.0, 0.0, 0.0, 1.0, 1.0]),
                text("fold", &["train", "train", "val", "train", "test", "val"]),
            ],
        }
    }

    fn data(split: TableSplit) -> TableData {
        TableData {
            dataset: "shop".into(),
            fingerprint: "00".into(),
            features: vec!["size".into(), "colour".into()],
            image_column: None,
            targets: vec![
                vec!["price".into()],
                vec!["kind".into()],
                vec!["l0".into(), "l1".into()],
            ],
            split,
            standardize: true,
            seed: 5,
        }
    }

    fn setup(data: &TableData) -> MtlSetup {
        let task = |name: &str, loss, outputs| MtlTask {
            name: name.into(),
            loss,
            outputs,
        };
        MtlSetup {
            factored: false,
            experiment_id: "e".into(),
            data: MtlData::Table(data.clone()),
            shared: Shared::Hard(Mlp {
                input: 3,
                hidden: vec![],
                output: 4,
            }),
            tasks: vec![
                task("price", TaskLoss::Mse, 1),
                task("kind", TaskLoss::CrossEntropy, 3),
                task("tags", TaskLoss::BinaryCrossEntropy, 2),
            ],
        }
    }

    fn batch(split: RowSplit, first: u64, count: u32) -> RowBatch {
        RowBatch {
            tasks: vec![0, 1, 2],
            first,
            count,
            split,
        }
    }

    fn rows(source: &TableRows, b: &RowBatch) -> (Vec<f32>, [Vec<f64>; 3]) {
        let rows = source
            .rows(1, b, &[0, 1, 2], Kind::Float, Device::Cpu)
            .unwrap();
        let f64s =
            |t: &Tensor| Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        (
            Vec::<f32>::try_from(rows.x.flatten(0, -1)).unwrap(),
            [
                f64s(&rows.targets[0]),
                f64s(&rows.targets[1]),
                f64s(&rows.targets[2]),
            ],
        )
    }

    #[test]
    fn held_out_rows_are_the_splits_rows_in_order_encoded_with_training_statistics() {
        let data = data(TableSplit::Column("fold".into()));
        let source = TableRows::new(&table(), Path::new("."), &data, &setup(&data)).unwrap();
        // Training rows 0, 1, 3: sizes 1, 3, 7, mean 11/3, population deviation sqrt(56/9).
        let (mean, std) = (11.0 / 3.0, (56.0f64 / 9.0).sqrt());
        let (x, targets) = rows(&source, &batch(RowSplit::Val, 0, 2));
        // Validation rows 2 and 5; colours one-hot over (blue, red).
        let want = [
            (5.0 - mean) / std,
            0.0,
            1.0,
            (-100.0 - mean) / std,
            0.0,
            1.0,
        ];
        for (got, want) in x.iter().zip(want) {
            assert!((*got as f64 - want).abs() < 1e-5, "{x:?}");
        }
        assert_eq!(targets[0], [30.0, 60.0]);
        assert_eq!(targets[1], [2.0, 2.0], "class c is the third of a, b, c");
        assert_eq!(targets[2], [0.0, 0.0, 1.0, 1.0]);
        let (_, test) = rows(&source, &batch(RowSplit::Test, 0, 1));
        assert_eq!(test[0], [50.0]);
        let e = source
            .rows(
                1,
                &batch(RowSplit::Val, 1, 2),
                &[0],
                Kind::Float,
                Device::Cpu,
            )
            .err()
            .unwrap();
        assert!(
            e.contains("rows 1 to 2 of the val split") && e.contains("it has 2"),
            "{e}"
        );
    }

    #[test]
    fn training_rows_run_epoch_after_epoch_each_a_permutation_and_chunks_agree() {
        let data = data(TableSplit::Fractions([0.5, 0.25, 0.25]));
        let source = TableRows::new(&table(), Path::new("."), &data, &setup(&data)).unwrap();
        let train = &source.splits[0];
        assert_eq!(train.len(), 3);
        let (_, whole) = rows(&source, &batch(RowSplit::Train, 0, 9));
        let prices = &whole[0];
        let mut epochs: Vec<Vec<f64>> = prices.chunks(3).map(|e| e.to_vec()).collect();
        let want: Vec<f64> = train.iter().map(|&r| 10.0 * (r + 1) as f64).collect();
        for epoch in &mut epochs {
            epoch.sort_by(f64::total_cmp);
            assert_eq!(*epoch, want, "every epoch reads every training row once");
        }
        // Any cut of the stream reads the same rows.
        let (_, a) = rows(&source, &batch(RowSplit::Train, 0, 4));
        let (_, b) = rows(&source, &batch(RowSplit::Train, 4, 5));
        assert_eq!([a[0].clone(), b[0].clone()].concat(), *prices);
        // The order is drawn from the seed: over many epochs, not always the same.
        let (_, long) = rows(&source, &batch(RowSplit::Train, 0, 60));
        let firsts: std::collections::BTreeSet<u64> =
            long[0].chunks(3).map(|e| e[0] as u64).collect();
        assert!(firsts.len() > 1, "{firsts:?}");
    }

    #[test]
    fn set_ups_that_do_not_fit_the_table_are_errors() {
        let data = data(TableSplit::Column("fold".into()));
        let mut wide = setup(&data);
        wide.shared = Shared::Hard(Mlp {
            input: 4,
            ..wide.shared.mlp().clone()
        });
        let e = TableRows::new(&table(), Path::new("."), &data, &wide)
            .err()
            .unwrap();
        assert!(e.contains("encode to 3 inputs"), "{e}");
        let mut classes = setup(&data);
        classes.tasks[1].outputs = 2;
        let e = TableRows::new(&table(), Path::new("."), &data, &classes)
            .err()
            .unwrap();
        assert!(e.contains("\"kind\""), "{e}");
        let mut by_size = data.clone();
        by_size.split = TableSplit::Column("size".into());
        let e = TableRows::new(&table(), Path::new("."), &by_size, &setup(&by_size))
            .err()
            .unwrap();
        assert!(e.contains("holds numbers"), "{e}");
    }

    #[test]
    fn an_image_column_reads_each_rows_picture_and_refuses_paths_outside_the_dataset() {
        use outerloop_proto::model::Conv4;
        let dir = tempfile::tempdir().unwrap();
        // Six 16x16 grey pictures, row r all of value 40 r.
        for r in 0..6u8 {
            image::GrayImage::from_pixel(16, 16, image::Luma([40 * r]))
                .save(dir.path().join(format!("{r}.png")))
                .unwrap();
        }
        let with_images = |names: [&str; 6]| {
            let mut table = table();
            table.columns.push(Column {
                name: "img".into(),
                values: Values::Text(names.iter().map(|n| Some(n.to_string())).collect()),
            });
            table
        };
        let data = TableData {
            features: Vec::new(),
            image_column: Some("img".into()),
            ..data(TableSplit::Column("fold".into()))
        };
        let setup = MtlSetup {
            factored: false,
            shared: Shared::Conv4(Conv4 {
                channels: 1,
                image_size: 16,
                filters: 2,
                output: 0,
            }),
            ..setup(&data)
        };
        let names = ["0.png", "1.png", "./2.png", "3.png", "4.png", "5.png"];
        let source = TableRows::new(&with_images(names), dir.path(), &data, &setup).unwrap();
        // Training rows 0, 1 and 3, in some order: each input is its picture, / 255.
        let (x, _) = rows(&source, &batch(RowSplit::Train, 0, 3));
        assert_eq!(x.len(), 3 * 256);
        let mut firsts: Vec<f32> = x.chunks(256).map(|p| p[0] * 255.0).collect();
        firsts.sort_by(f32::total_cmp);
        assert_eq!(firsts, [0.0, 40.0, 120.0]);
        for (bad, says) in [
            ("../0.png", "without `..`"),
            ("/etc/passwd", "without `..`"),
            ("9.png", "image `9.png` is not in"),
        ] {
            let mut names = names;
            names[4] = bad;
            let error = TableRows::new(&with_images(names), dir.path(), &data, &setup)
                .err()
                .unwrap();
            assert!(
                error.starts_with("row 5: ") && error.contains(says),
                "{bad}: {error}"
            );
        }
    }
}
