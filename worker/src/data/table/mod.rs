//! Table datasets: CSV or Parquet files in one directory, read into memory as one table with the manifest the coordinator plans from.

mod csv;
mod parquet;

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use outerloop_proto::dataset::{ColumnEntry, Layout, Level, Manifest, TableManifest, MAX_LEVELS};
use sha2::{Digest, Sha256};

/// A table read into memory, columns in file order.
#[derive(Debug)]
pub struct Table {
    pub rows: usize,
    pub columns: Vec<Column>,
}

#[derive(Debug)]
pub struct Column {
    pub name: String,
    pub values: Values,
}

#[derive(Debug)]
pub enum Values {
    /// Every present value is a number; missing cells are NaN.
    Numeric(Vec<f64>),
    /// Text; missing cells are None.
    Text(Vec<Option<String>>),
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

impl Column {
    /// Each row's index into the column's levels in canonical order (the order of the
    /// manifest's `levels`), u32::MAX where the cell is missing; None when the column has more
    /// than MAX_LEVELS distinct values.
    pub fn level_codes(&self) -> Option<Vec<u32>> {
        match &self.values {
            Values::Numeric(v) => codes(numbers(v)),
            Values::Text(v) => codes(texts(v)),
        }
    }

    fn entry(&self) -> ColumnEntry {
        let (numeric, missing, levels) = match &self.values {
            Values::Numeric(v) => (
                true,
                missing(numbers(v)),
                listed(numbers(v), |x| x.0.to_string()),
            ),
            Values::Text(v) => (false, missing(texts(v)), listed(texts(v), str::to_string)),
        };
        ColumnEntry {
            name: self.name.clone(),
            numeric,
            missing,
            levels,
        }
    }
}

/// A numeric column's cells as keys, None where missing.
fn numbers(values: &[f64]) -> impl Iterator<Item = Option<Total>> + Clone + '_ {
    values.iter().map(|&x| (!x.is_nan()).then_some(Total(x)))
}

/// A text column's cells as keys (`str` orders by bytes), None where missing.
fn texts(values: &[Option<String>]) -> impl Iterator<Item = Option<&str>> + Clone + '_ {
    values.iter().map(|v| v.as_deref())
}

fn missing<K>(cells: impl Iterator<Item = Option<K>>) -> u64 {
    cells.filter(Option::is_none).count() as u64
}

/// The distinct present values with their counts, in canonical order; None past MAX_LEVELS,
/// stopping as soon as that is known (a column of floats has one per row).
fn distinct<K: Ord>(cells: impl Iterator<Item = Option<K>>) -> Option<BTreeMap<K, u64>> {
    let mut levels = BTreeMap::new();
    for key in cells.flatten() {
        *levels.entry(key).or_insert(0) += 1;
        if levels.len() > MAX_LEVELS {
            return None;
        }
    }
    Some(levels)
}

fn listed<K: Ord>(
    cells: impl Iterator<Item = Option<K>>,
    write: impl Fn(K) -> String,
) -> Option<Vec<Level>> {
    let levels = distinct(cells)?.into_iter();
    Some(
        levels
            .map(|(key, count)| Level {
                value: write(key),
                count,
            })
            .collect(),
    )
}

fn codes<K: Ord>(cells: impl Iterator<Item = Option<K>> + Clone) -> Option<Vec<u32>> {
    let mut levels = distinct(cells.clone())?;
    // A level's count becomes its index: the map iterates in canonical order.
    for (i, n) in levels.values_mut().enumerate() {
        *n = i as u64;
    }
    Some(
        cells
            .map(|c| c.map_or(u32::MAX, |key| levels[&key] as u32))
            .collect(),
    )
}

/// A number ordered by `f64::total_cmp`, so that it can key a map.
#[derive(Clone, Copy, Debug)]
struct Total(f64);

impl PartialEq for Total {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Total {}

impl PartialOrd for Total {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Total {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Parquet,
}

impl Format {
    fn of(path: &Path) -> Option<Format> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "csv" => Some(Format::Csv),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "CSV",
            Format::Parquet => "Parquet",
        }
    }
}

/// The CSV and Parquet files directly in `dir`, sorted by name, with their format.
fn table_files(dir: &Path) -> io::Result<Vec<(PathBuf, Format)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(format) = Format::of(&path).filter(|_| path.is_file()) {
            files.push((path, format));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// Whether `dir` directly holds a CSV or Parquet file (an image layout takes precedence; the
/// caller checks for that first).
pub(crate) fn holds_table_files(dir: &Path) -> bool {
    table_files(dir).is_ok_and(|files| !files.is_empty())
}

/// Reads the table dataset in `dir`: its manifest (name `name`, Layout::Table, classes empty,
/// table Some(..)) and its data.
pub fn read_table(dir: &Path, name: &str) -> io::Result<(Manifest, Table)> {
    let files = table_files(dir)?;
    let Some((first, format)) = files.first().cloned() else {
        return Err(invalid(format!(
            "{}: no *.csv or *.parquet files",
            dir.display()
        )));
    };
    if let Some((other, other_format)) = files.iter().find(|(_, f)| *f != format) {
        return Err(invalid(format!(
            "{} holds both {} ({}) and {} ({}) files; a table dataset is in one format",
            dir.display(),
            format.as_str(),
            file_name(&first),
            other_format.as_str(),
            file_name(other),
        )));
    }
    let paths: Vec<PathBuf> = files.into_iter().map(|(path, _)| path).collect();
    let table = match format {
        Format::Csv => csv::read(&paths)?,
        Format::Parquet => parquet::read(&paths)?,
    };
    if table.rows == 0 {
        return Err(invalid(format!(
            "{}: the table has no rows, only column names",
            dir.display()
        )));
    }
    let manifest = Manifest {
        name: name.to_string(),
        layout: Layout::Table,
        fingerprint: fingerprint(dir, &paths)?,
        classes: Vec::new(),
        table: Some(TableManifest {
            rows: table.rows as u64,
            columns: table.columns.iter().map(Column::entry).collect(),
        }),
    };
    Ok((manifest, table))
}

/// A print of every table file's name and full contents (unlike the image fingerprint of
/// paths and sizes, a table's bytes are cheap to hash once, and an edited cell keeps the size),
/// then of every file in the dataset's subdirectories, the images a column names, by path and
/// size as image datasets are printed.
fn fingerprint(dir: &Path, files: &[PathBuf]) -> io::Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(Layout::Table.as_str().as_bytes());
    for path in files {
        let mut contents = Sha256::new();
        io::copy(&mut File::open(path)?, &mut contents)?;
        let contents = hex(&contents.finalize());
        hasher.update(format!("\n{}\t{contents}", file_name(path)).as_bytes());
    }
    let mut others = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files_under(&path, &mut others)?;
        }
    }
    let mut others: Vec<(String, u64)> = others
        .into_iter()
        .map(|(path, size)| {
            let relative = path.strip_prefix(dir).unwrap_or(&path);
            (relative.to_string_lossy().replace('\\', "/"), size)
        })
        .collect();
    others.sort();
    for (relative, size) in others {
        hasher.update(format!("\n{relative}\t{size}").as_bytes());
    }
    // 16 hex digits, as the image datasets' fingerprints.
    Ok(hex(&hasher.finalize()[..8]))
}

/// Every regular file under `dir`, at any depth, with its size.
fn files_under(dir: &Path, found: &mut Vec<(PathBuf, u64)>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            files_under(&entry.path(), found)?;
        } else if kind.is_file() {
            found.push((entry.path(), entry.metadata()?.len()));
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Checks a file's column names: no name twice (a column is chosen by name), and the same
/// names in the same order as the first file's, since the files are one table.
fn check_header(
    first: Option<(&Path, &[String])>,
    path: &Path,
    names: &[String],
) -> io::Result<()> {
    if names.is_empty() {
        return Err(invalid(format!("{}: no columns", path.display())));
    }
    for (i, name) in names.iter().enumerate() {
        if let Some(j) = names[..i].iter().position(|n| n == name) {
            return Err(invalid(format!(
                "{}: columns {} and {} are both named `{name}`; rename one",
                path.display(),
                j + 1,
                i + 1
            )));
        }
    }
    let Some((first, expected)) = first else {
        return Ok(());
    };
    let describe = |names: &[String], i: usize| {
        names
            .get(i)
            .map_or_else(|| "absent".to_string(), |n| format!("`{n}`"))
    };
    match (0..expected.len().max(names.len())).find(|&i| expected.get(i) != names.get(i)) {
        None => Ok(()),
        Some(i) => Err(invalid(format!(
            "{} and {} must have the same columns in the same order, but column {} is {} in {} and {} in {}",
            file_name(first),
            file_name(path),
            i + 1,
            describe(expected, i),
            file_name(first),
            describe(names, i),
            file_name(path),
        ))),
    }
}

/// The error for a cell that reads as NaN or an infinity: NaN stands for a missing cell, so a
/// real NaN would silently become one.
fn non_finite(path: &Path, row: usize, column: &str, value: f64) -> io::Error {
    invalid(format!(
        "{}: row {row}, column `{column}`: {value} is not a finite number; leave the cell empty if the value is missing",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn write(dir: &Path, name: &str, contents: &str) {
        fs::write(dir.join(name), contents).unwrap();
    }

    pub(super) fn error(dir: &Path) -> String {
        let e = read_table(dir, "t").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        e.to_string()
    }

    fn levels(manifest: &Manifest, column: &str) -> Option<Vec<(String, u64)>> {
        let levels = manifest
            .table
            .as_ref()
            .unwrap()
            .column(column)
            .unwrap()
            .levels
            .as_ref()?;
        Some(levels.iter().map(|l| (l.value.clone(), l.count)).collect())
    }

    fn owned(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
        pairs.iter().map(|&(v, n)| (v.to_string(), n)).collect()
    }

    #[test]
    fn a_csv_reads_to_columns_levels_and_codes() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "data.csv",
            "x,label,note,empty\n10,b,\"hello, world\",\n2,a,,\n 2.5 ,b,plain,  \n2,\"a\",\"say \"\"hi\"\"\",\n",
        );
        let (manifest, table) = read_table(dir.path(), "t").unwrap();
        assert_eq!(
            (manifest.name.as_str(), manifest.layout),
            ("t", Layout::Table)
        );
        assert!(manifest.classes.is_empty());
        assert_eq!(manifest.fingerprint.len(), 16);
        assert_eq!(table.rows, 4);
        let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["x", "label", "note", "empty"]);

        let Values::Numeric(x) = &table.column("x").unwrap().values else {
            panic!("x is numeric")
        };
        assert_eq!(x, &[10.0, 2.0, 2.5, 2.0]);
        assert_eq!(
            levels(&manifest, "x").unwrap(),
            owned(&[("2", 2), ("2.5", 1), ("10", 1)]),
            "numbers sort by value, not as text"
        );
        assert_eq!(
            table.column("x").unwrap().level_codes().unwrap(),
            [2, 0, 1, 0]
        );

        let Values::Text(note) = &table.column("note").unwrap().values else {
            panic!("note is text")
        };
        assert_eq!(
            note,
            &[
                Some("hello, world".to_string()),
                None,
                Some("plain".to_string()),
                Some("say \"hi\"".to_string())
            ]
        );
        let columns = &manifest.table.as_ref().unwrap().columns;
        let note_entry = &columns[2];
        assert!(!note_entry.numeric);
        assert_eq!(note_entry.missing, 1);
        assert_eq!(
            table.column("note").unwrap().level_codes().unwrap(),
            [0, u32::MAX, 1, 2],
            "text sorts by bytes: `h` < `p` < `s`"
        );
        assert_eq!(
            levels(&manifest, "label").unwrap(),
            owned(&[("a", 2), ("b", 2)])
        );

        let empty = &columns[3];
        assert!(empty.numeric, "a column without values is numeric");
        assert_eq!(empty.missing, 4, "whitespace-only cells are missing");
        assert_eq!(empty.levels, Some(Vec::new()));
        assert!(
            matches!(&table.columns[3].values, Values::Numeric(v) if v.iter().all(|x| x.is_nan()))
        );
        assert_eq!(table.columns[3].level_codes().unwrap(), [u32::MAX; 4]);
    }

    #[test]
    fn numbers_are_written_in_their_shortest_form() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.csv", "v\n1.0\n-3\n0.50\n1e2\n1\n");
        let (manifest, _) = read_table(dir.path(), "t").unwrap();
        assert_eq!(
            levels(&manifest, "v").unwrap(),
            owned(&[("-3", 1), ("0.5", 1), ("1", 2), ("100", 1)])
        );
    }

    #[test]
    fn more_than_max_levels_distinct_values_list_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut csv = String::from("i,word,few\n");
        for i in 0..=MAX_LEVELS {
            csv.push_str(&format!("{i},w{i},{}\n", i % 3));
        }
        write(dir.path(), "a.csv", &csv);
        let (manifest, table) = read_table(dir.path(), "t").unwrap();
        assert_eq!(table.rows, MAX_LEVELS + 1);
        assert_eq!(levels(&manifest, "i"), None);
        assert_eq!(levels(&manifest, "word"), None);
        assert_eq!(table.column("i").unwrap().level_codes(), None);
        assert_eq!(table.column("word").unwrap().level_codes(), None);
        assert_eq!(levels(&manifest, "few").unwrap().len(), 3);

        // Exactly MAX_LEVELS is still listed.
        let mut csv = String::from("i\n");
        for i in 0..MAX_LEVELS {
            csv.push_str(&format!("{i}\n"));
        }
        write(dir.path(), "a.csv", &csv);
        let (manifest, table) = read_table(dir.path(), "t").unwrap();
        assert_eq!(levels(&manifest, "i").unwrap().len(), MAX_LEVELS);
        let codes = table.column("i").unwrap().level_codes().unwrap();
        assert_eq!(codes[..3], [0, 1, 2]);
    }

    #[test]
    fn files_are_concatenated_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "part-2.CSV", "a,b\n3,z\n");
        write(dir.path(), "part-1.csv", "a,b\n1,x\n2,y\n");
        write(dir.path(), "notes.txt", "not a table");
        let (manifest, table) = read_table(dir.path(), "t").unwrap();
        assert_eq!(table.rows, 3);
        assert_eq!(manifest.table.as_ref().unwrap().rows, 3);
        assert!(matches!(&table.columns[0].values, Values::Numeric(v) if v == &[1.0, 2.0, 3.0]));
        let Values::Text(b) = &table.columns[1].values else {
            panic!("b is text")
        };
        assert_eq!(b.iter().flatten().collect::<Vec<_>>(), ["x", "y", "z"]);
    }

    #[test]
    fn a_column_is_numeric_only_if_it_is_in_every_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "1.csv", "a\n1\n");
        write(dir.path(), "2.csv", "a\nx\n");
        let (manifest, table) = read_table(dir.path(), "t").unwrap();
        assert!(!manifest.table.unwrap().columns[0].numeric);
        assert!(
            matches!(&table.columns[0].values, Values::Text(v) if v == &[Some("1".to_string()), Some("x".to_string())])
        );
    }

    #[test]
    fn files_with_other_columns_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "1.csv", "a,b,c\n1,2,3\n");
        write(dir.path(), "2.csv", "a,c,b\n1,2,3\n");
        let e = error(dir.path());
        assert!(
            e.contains("1.csv and 2.csv must have the same columns")
                && e.contains("column 2 is `b` in 1.csv and `c` in 2.csv"),
            "{e}"
        );
        write(dir.path(), "2.csv", "a,b\n1,2\n");
        let e = error(dir.path());
        assert!(
            e.contains("column 3 is `c` in 1.csv and absent in 2.csv"),
            "{e}"
        );
        write(dir.path(), "2.csv", "a,b,c,d\n1,2,3,4\n");
        let e = error(dir.path());
        assert!(
            e.contains("column 4 is absent in 1.csv and `d` in 2.csv"),
            "{e}"
        );
    }

    #[test]
    fn mixed_formats_empty_tables_and_twice_named_columns_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.csv", "a,b,a\n1,2,3\n");
        let e = error(dir.path());
        assert!(e.contains("columns 1 and 3 are both named `a`"), "{e}");
        write(dir.path(), "a.csv", "a,b\n");
        let e = error(dir.path());
        assert!(e.contains("no rows"), "{e}");
        write(dir.path(), "b.Parquet", "");
        let e = error(dir.path());
        assert!(
            e.contains("both CSV (a.csv) and Parquet (b.Parquet) files"),
            "{e}"
        );
    }

    #[test]
    fn the_fingerprint_follows_every_byte() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for dir in [a.path(), b.path()] {
            write(dir, "1.csv", "a,b\n1,x\n");
            write(dir, "2.csv", "a,b\n2,y\n");
        }
        let print = |dir: &Path| read_table(dir, "t").unwrap().0.fingerprint;
        assert_eq!(print(a.path()), print(b.path()), "same files, same print");
        assert_eq!(print(a.path()), print(a.path()), "nothing changed");
        write(b.path(), "2.csv", "a,b\n3,y\n");
        assert_ne!(
            print(a.path()),
            print(b.path()),
            "one byte changed, same size"
        );
        write(b.path(), "2.csv", "a,b\n2,y\n");
        assert_eq!(print(a.path()), print(b.path()), "changed back");
        fs::rename(b.path().join("2.csv"), b.path().join("3.csv")).unwrap();
        assert_ne!(print(a.path()), print(b.path()), "a file's name changed");
        fs::rename(b.path().join("3.csv"), b.path().join("2.csv")).unwrap();
        // The images a column names, in subdirectories: by path and size.
        for dir in [a.path(), b.path()] {
            fs::create_dir_all(dir.join("images/x")).unwrap();
            write(&dir.join("images/x"), "0.png", "four");
        }
        assert_eq!(print(a.path()), print(b.path()), "the same images");
        write(&b.path().join("images/x"), "0.png", "five!");
        assert_ne!(print(a.path()), print(b.path()), "an image's size changed");
        write(&b.path().join("images/x"), "0.png", "four");
        write(&b.path().join("images/x"), "1.png", "four");
        assert_ne!(print(a.path()), print(b.path()), "an image more");
    }
}
