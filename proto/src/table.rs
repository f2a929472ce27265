//! How a table's rows fall into training, validation and test rows: the counts the coordinator plans with and the rows every worker reads, from one definition.

use crate::dataset::TableManifest;
use crate::splitmix::splitmix64;

/// The values a split column may hold, in split order.
pub const SPLIT_NAMES: [&str; 3] = ["train", "val", "test"];

/// Rows of each split (train, val, test) when `rows` are drawn in `fractions`: the first two
/// rounded down, the test split the rest.
pub fn fraction_counts(rows: u64, fractions: [f64; 3]) -> [u64; 3] {
    let part = |f: f64| ((f * rows as f64).floor() as u64).min(rows);
    let train = part(fractions[0]);
    let val = part(fractions[1]).min(rows - train);
    [train, val, rows - train - val]
}

/// The rows of each split when `rows` are drawn in `fractions` by `seed`, each split in
/// ascending row order. Rows are ranked by a hash of (seed, row), so the draw is a pure
/// function of its arguments, whichever process makes it.
pub fn fraction_rows(rows: u64, fractions: [f64; 3], seed: u64) -> [Vec<u64>; 3] {
    let mut ranked: Vec<(u64, u64)> = (0..rows)
        .map(|row| (splitmix64(seed ^ splitmix64(row)), row))
        .collect();
    ranked.sort_unstable();
    let [train, val, _] = fraction_counts(rows, fractions);
    let mut splits = [Vec::new(), Vec::new(), Vec::new()];
    for (rank, (_, row)) in ranked.into_iter().enumerate() {
        let split = match rank as u64 {
            r if r < train => 0,
            r if r < train + val => 1,
            _ => 2,
        };
        splits[split].push(row);
    }
    for split in &mut splits {
        split.sort_unstable();
    }
    splits
}

/// Rows of each split when the manifest's column `column` names them, or why it cannot:
/// the column is missing, has missing cells, or holds a value other than the split names.
pub fn column_counts(table: &TableManifest, column: &str) -> Result<[u64; 3], String> {
    let entry = table.column(column).ok_or_else(|| {
        format!(
            "the table has no column `{column}`; its columns are {}",
            column_names(table)
        )
    })?;
    if entry.missing > 0 {
        return Err(format!(
            "column `{column}` has {} empty cells; every row needs a split",
            entry.missing
        ));
    }
    let levels = entry.levels.as_ref().ok_or_else(|| {
        format!("column `{column}` has more than a thousand distinct values, not just train, val and test")
    })?;
    let mut counts = [0; 3];
    for level in levels {
        let split = SPLIT_NAMES
            .iter()
            .position(|s| *s == level.value)
            .ok_or_else(|| {
                format!(
                    "column `{column}` holds `{}`; a split column holds only {}",
                    level.value,
                    SPLIT_NAMES.join(", ")
                )
            })?;
        counts[split] = level.count;
    }
    Ok(counts)
}

/// The table's column names, comma-separated, for error messages.
pub fn column_names(table: &TableManifest) -> String {
    let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{ColumnEntry, Level};

    #[test]
    fn fractions_cover_every_row_once_in_the_stated_proportions() {
        assert_eq!(fraction_counts(10, [0.8, 0.1, 0.1]), [8, 1, 1]);
        assert_eq!(fraction_counts(7, [0.5, 0.25, 0.25]), [3, 1, 3]);
        assert_eq!(fraction_counts(3, [1.0, 0.5, 0.0]), [3, 0, 0]);
        let splits = fraction_rows(1000, [0.7, 0.2, 0.1], 9);
        assert_eq!(splits.each_ref().map(Vec::len), [700, 200, 100]);
        let mut all: Vec<u64> = splits.concat();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert!(splits.iter().all(|s| s.is_sorted()));
        // A pure function of the seed: the same seed, the same draw; another, another.
        assert_eq!(splits, fraction_rows(1000, [0.7, 0.2, 0.1], 9));
        assert_ne!(splits, fraction_rows(1000, [0.7, 0.2, 0.1], 10));
        // Not the file order: the validation rows are spread over the table.
        assert!(splits[1][0] < 100 && *splits[1].last().unwrap() > 900);
    }

    #[test]
    fn a_split_column_counts_its_levels_and_refuses_anything_else() {
        let column = |levels: &[(&str, u64)], missing| ColumnEntry {
            name: "fold".into(),
            numeric: false,
            missing,
            levels: Some(
                levels
                    .iter()
                    .map(|(v, c)| Level {
                        value: v.to_string(),
                        count: *c,
                    })
                    .collect(),
            ),
        };
        let table = |c| TableManifest {
            rows: 10,
            columns: vec![c],
        };
        let good = table(column(&[("test", 2), ("train", 7), ("val", 1)], 0));
        assert_eq!(column_counts(&good, "fold"), Ok([7, 1, 2]));
        let e = column_counts(&good, "split").unwrap_err();
        assert!(e.contains("no column `split`") && e.contains("fold"), "{e}");
        let e = column_counts(&table(column(&[("dev", 3)], 0)), "fold").unwrap_err();
        assert!(e.contains("`dev`") && e.contains("train, val, test"), "{e}");
        let e = column_counts(&table(column(&[("train", 3)], 2)), "fold").unwrap_err();
        assert!(e.contains("2 empty cells"), "{e}");
    }
}
