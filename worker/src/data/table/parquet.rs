//! Parquet files read as one table, column by column: flat columns of booleans, integers, floats or UTF-8 strings.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use ::parquet::basic::{ConvertedType, LogicalType, Repetition, Type as Physical};
use ::parquet::column::reader::{ColumnReader, ColumnReaderImpl};
use ::parquet::data_type::DataType;
use ::parquet::errors::ParquetError;
use ::parquet::file::reader::{FileReader, SerializedFileReader};
use ::parquet::schema::types::ColumnDescriptor;

use super::{check_header, invalid, non_finite, Column, Table, Values};

/// How a column's stored values become the table's.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    /// INT32, or INT64; unsigned ones are stored as their bit patterns.
    Int {
        signed: bool,
    },
    Float,
    Text,
}

/// Reads `files` (in this order) as one table.
pub(super) fn read(files: &[PathBuf]) -> io::Result<Table> {
    let mut names: Vec<String> = Vec::new();
    let mut columns: Vec<Values> = Vec::new();
    let mut rows = 0;
    for (file, path) in files.iter().enumerate() {
        let opened = File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let reader = SerializedFileReader::new(opened).map_err(|e| parquet_error(path, e))?;
        let schema = reader.metadata().file_metadata().schema_descr();
        for field in schema.root_schema().get_fields() {
            let shape = if field.is_group() {
                "nested (a group, list or map)"
            } else if field.get_basic_info().repetition() == Repetition::REPEATED {
                "repeated (a list)"
            } else {
                continue;
            };
            return Err(invalid(format!(
                "{}: column `{}` is {shape}; a table's columns must be flat",
                path.display(),
                field.name()
            )));
        }
        let header: Vec<String> = schema
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        let kinds = schema
            .columns()
            .iter()
            .map(|c| kind(path, c))
            .collect::<io::Result<Vec<_>>>()?;
        let first = (file > 0).then(|| (files[0].as_path(), names.as_slice()));
        check_header(first, path, &header)?;
        if file == 0 {
            columns = kinds
                .iter()
                .map(|&k| match k {
                    Kind::Text => Values::Text(Vec::new()),
                    _ => Values::Numeric(Vec::new()),
                })
                .collect();
            names = header;
        }
        for ((values, &kind), name) in columns.iter_mut().zip(&kinds).zip(&names) {
            if matches!(values, Values::Text(_)) != (kind == Kind::Text) {
                let text = |text| if text { "text" } else { "numeric" };
                return Err(invalid(format!(
                    "column `{name}` is {} in {} but {} in {}; the files must agree",
                    text(kind != Kind::Text),
                    files[0].display(),
                    text(kind == Kind::Text),
                    path.display(),
                )));
            }
        }
        rows += read_file(path, &reader, &kinds, &names, &mut columns)?;
    }
    let columns = names
        .into_iter()
        .zip(columns)
        .map(|(name, values)| Column { name, values })
        .collect();
    Ok(Table { rows, columns })
}

/// Appends the rows of one file to `columns`; returns how many.
fn read_file(
    path: &Path,
    reader: &SerializedFileReader<File>,
    kinds: &[Kind],
    names: &[String],
    columns: &mut [Values],
) -> io::Result<usize> {
    let mut rows = 0;
    for group in 0..reader.metadata().num_row_groups() {
        let group = reader
            .get_row_group(group)
            .map_err(|e| parquet_error(path, e))?;
        let count = usize::try_from(group.metadata().num_rows()).unwrap_or(0);
        for (i, ((values, &kind), name)) in columns.iter_mut().zip(kinds).zip(names).enumerate() {
            let column = group
                .get_column_reader(i)
                .map_err(|e| parquet_error(path, e))?;
            let cells = Cells {
                path,
                name,
                first_row: rows,
                count,
            };
            match (column, kind, values) {
                (ColumnReader::BoolColumnReader(r), _, Values::Numeric(out)) => {
                    cells.numbers(r, out, |&b| if b { 1.0 } else { 0.0 })
                }
                (
                    ColumnReader::Int32ColumnReader(r),
                    Kind::Int { signed },
                    Values::Numeric(out),
                ) => cells.numbers(r, out, |&v| if signed { v as f64 } else { v as u32 as f64 }),
                (
                    ColumnReader::Int64ColumnReader(r),
                    Kind::Int { signed },
                    Values::Numeric(out),
                ) => cells.numbers(r, out, |&v| if signed { v as f64 } else { v as u64 as f64 }),
                (ColumnReader::FloatColumnReader(r), _, Values::Numeric(out)) => {
                    cells.numbers(r, out, |&v| v as f64)
                }
                (ColumnReader::DoubleColumnReader(r), _, Values::Numeric(out)) => {
                    cells.numbers(r, out, |&v| v)
                }
                (ColumnReader::ByteArrayColumnReader(r), _, Values::Text(out)) => {
                    cells.texts(r, out)
                }
                // `kind` admitted only the types above, and `read` matched text to text.
                _ => Err(invalid(format!(
                    "{}: column `{name}` changed type while being read",
                    path.display()
                ))),
            }?;
        }
        rows += count;
    }
    Ok(rows)
}

/// One column chunk (a column of one row group) and where it sits, for errors.
struct Cells<'a> {
    path: &'a Path,
    name: &'a str,
    /// Rows of the file before this row group.
    first_row: usize,
    count: usize,
}

impl Cells<'_> {
    /// Every row's value, None where null.
    fn read<T: DataType>(&self, mut reader: ColumnReaderImpl<T>) -> io::Result<Vec<Option<T::T>>> {
        let (mut values, mut levels) = (Vec::new(), Vec::new());
        let mut read = 0;
        while read < self.count {
            let (records, _, _) = reader
                .read_records(self.count - read, Some(&mut levels), None, &mut values)
                .map_err(|e| parquet_error(self.path, e))?;
            if records == 0 {
                break;
            }
            read += records;
        }
        if read != self.count {
            return Err(invalid(format!(
                "{}: column `{}` has {read} values in a row group of {} rows",
                self.path.display(),
                self.name,
                self.count
            )));
        }
        // A required column has no definition levels; in an optional one, level 1 is a value
        // and 0 a null (the schema is flat).
        if levels.is_empty() {
            return Ok(values.into_iter().map(Some).collect());
        }
        let mut values = values.into_iter();
        Ok(levels
            .iter()
            .map(|&l| if l > 0 { values.next() } else { None })
            .collect())
    }

    fn numbers<T: DataType>(
        &self,
        reader: ColumnReaderImpl<T>,
        out: &mut Vec<f64>,
        number: impl Fn(&T::T) -> f64,
    ) -> io::Result<()> {
        for (i, value) in self.read(reader)?.iter().enumerate() {
            let x = value.as_ref().map_or(f64::NAN, &number);
            if value.is_some() && !x.is_finite() {
                return Err(non_finite(self.path, self.first_row + i + 1, self.name, x));
            }
            out.push(x);
        }
        Ok(())
    }

    fn texts<T: DataType<T = ::parquet::data_type::ByteArray>>(
        &self,
        reader: ColumnReaderImpl<T>,
        out: &mut Vec<Option<String>>,
    ) -> io::Result<()> {
        for (i, value) in self.read(reader)?.into_iter().enumerate() {
            let text = value
                .map(|v| {
                    v.as_utf8().map(str::to_string).map_err(|_| {
                        invalid(format!(
                            "{}: row {}, column `{}`: not UTF-8 text",
                            self.path.display(),
                            self.first_row + i + 1,
                            self.name
                        ))
                    })
                })
                .transpose()?;
            out.push(text);
        }
        Ok(())
    }
}

/// How the column is read, or why it is not: a table holds numbers and text, and a date or a
/// decimal has no single right number.
fn kind(path: &Path, column: &ColumnDescriptor) -> io::Result<Kind> {
    use ConvertedType as C;
    let (logical, converted) = (column.logical_type_ref(), column.converted_type());
    let kind = match (column.physical_type(), logical) {
        (Physical::BOOLEAN, None) => Some(Kind::Bool),
        (Physical::INT32 | Physical::INT64, Some(LogicalType::Integer(int))) => Some(Kind::Int {
            signed: int.is_signed,
        }),
        (Physical::INT32 | Physical::INT64, None) => match converted {
            C::NONE | C::INT_8 | C::INT_16 | C::INT_32 | C::INT_64 => {
                Some(Kind::Int { signed: true })
            }
            C::UINT_8 | C::UINT_16 | C::UINT_32 | C::UINT_64 => Some(Kind::Int { signed: false }),
            _ => None,
        },
        (Physical::FLOAT | Physical::DOUBLE, None) => Some(Kind::Float),
        (Physical::BYTE_ARRAY, Some(LogicalType::String | LogicalType::Enum)) => Some(Kind::Text),
        (Physical::BYTE_ARRAY, None) if matches!(converted, C::UTF8 | C::ENUM) => Some(Kind::Text),
        _ => None,
    };
    kind.ok_or_else(|| {
        let physical = column.physical_type();
        // Writers set the legacy converted type beside most logical types, and it reads
        // better (`DECIMAL` rather than the logical type's fields).
        let stored = match (converted, logical) {
            (C::NONE, Some(logical)) => format!("{physical} ({logical:?})"),
            (C::NONE, None) if physical == Physical::BYTE_ARRAY => {
                format!("{physical} (binary, not marked as a string)")
            }
            (C::NONE, None) => physical.to_string(),
            (converted, _) => format!("{physical} ({converted})"),
        };
        invalid(format!(
            "{}: column `{}` has Parquet type {stored}, which is not read: a table's columns must be booleans, integers, floats or UTF-8 strings; convert it to one of these when writing the file",
            path.display(),
            column.name()
        ))
    })
}

fn parquet_error(path: &Path, e: ParquetError) -> io::Error {
    match e {
        ParquetError::External(e) => invalid(format!("{}: {e}", path.display())),
        e => invalid(format!(
            "{}: not a readable Parquet file: {e}",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::sync::Arc;

    use ::parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
    use ::parquet::file::properties::WriterProperties;
    use ::parquet::file::writer::SerializedFileWriter;
    use ::parquet::schema::parser::parse_message_type;

    use super::super::tests::{error, write};
    use super::super::{read_table, Values};

    /// Writes one row group of the four columns; `None` in `score` is a null.
    fn write_parquet(
        path: &std::path::Path,
        ids: &[i64],
        scores: &[Option<f64>],
        flags: &[bool],
        names: &[&str],
    ) {
        let schema = parse_message_type(
            "message t {
                REQUIRED INT64 id;
                OPTIONAL DOUBLE score;
                REQUIRED BOOLEAN flag;
                REQUIRED BYTE_ARRAY name (UTF8);
            }",
        )
        .unwrap();
        let props = Arc::new(WriterProperties::builder().build());
        let file = fs::File::create(path).unwrap();
        let mut writer = SerializedFileWriter::new(file, Arc::new(schema), props).unwrap();
        let mut group = writer.next_row_group().unwrap();

        let mut column = group.next_column().unwrap().unwrap();
        column
            .typed::<Int64Type>()
            .write_batch(ids, None, None)
            .unwrap();
        column.close().unwrap();

        let mut column = group.next_column().unwrap().unwrap();
        let present: Vec<f64> = scores.iter().flatten().copied().collect();
        let levels: Vec<i16> = scores.iter().map(|s| s.is_some() as i16).collect();
        column
            .typed::<DoubleType>()
            .write_batch(&present, Some(&levels), None)
            .unwrap();
        column.close().unwrap();

        let mut column = group.next_column().unwrap().unwrap();
        column
            .typed::<BoolType>()
            .write_batch(flags, None, None)
            .unwrap();
        column.close().unwrap();

        let mut column = group.next_column().unwrap().unwrap();
        let names: Vec<ByteArray> = names.iter().map(|&n| ByteArray::from(n)).collect();
        column
            .typed::<ByteArrayType>()
            .write_batch(&names, None, None)
            .unwrap();
        column.close().unwrap();

        group.close().unwrap();
        writer.close().unwrap();
    }

    #[test]
    fn a_parquet_file_reads_like_the_same_csv() {
        let (pq, csv) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_parquet(
            &pq.path().join("a.parquet"),
            &[10, 2, -3, 2],
            &[Some(0.5), None, Some(2.0), Some(0.5)],
            &[true, false, true, true],
            &["b", "a", "b", "c"],
        );
        write(
            csv.path(),
            "a.csv",
            "id,score,flag,name\n10,0.5,1,b\n2,,0,a\n-3,2,1,b\n2,0.5,1,c\n",
        );
        let (mut from_parquet, table) = read_table(pq.path(), "t").unwrap();
        let (mut from_csv, csv_table) = read_table(csv.path(), "t").unwrap();
        assert_ne!(from_parquet.fingerprint, from_csv.fingerprint);
        from_parquet.fingerprint.clear();
        from_csv.fingerprint.clear();
        assert_eq!(from_parquet, from_csv);
        assert_eq!(format!("{table:?}"), format!("{csv_table:?}"));

        let entry = from_parquet
            .table
            .as_ref()
            .unwrap()
            .column("score")
            .unwrap();
        assert_eq!((entry.numeric, entry.missing), (true, 1));
        assert!(
            matches!(&table.column("flag").unwrap().values, Values::Numeric(v) if v == &[1.0, 0.0, 1.0, 1.0])
        );
        assert_eq!(
            table.column("name").unwrap().level_codes().unwrap(),
            [1, 0, 1, 2]
        );
        assert_eq!(
            table.column("id").unwrap().level_codes().unwrap(),
            [2, 1, 0, 1]
        );
    }

    #[test]
    fn parquet_files_are_concatenated_and_their_rows_counted() {
        let dir = tempfile::tempdir().unwrap();
        write_parquet(
            &dir.path().join("2.parquet"),
            &[3],
            &[None],
            &[false],
            &["z"],
        );
        write_parquet(
            &dir.path().join("1.PARQUET"),
            &[1, 2],
            &[Some(1.0), None],
            &[true, true],
            &["x", "y"],
        );
        let (manifest, table) = read_table(dir.path(), "t").unwrap();
        assert_eq!((table.rows, manifest.table.unwrap().rows), (3, 3));
        assert!(matches!(&table.columns[0].values, Values::Numeric(v) if v == &[1.0, 2.0, 3.0]));
    }

    #[test]
    fn a_non_finite_parquet_value_is_refused_with_its_row() {
        let dir = tempfile::tempdir().unwrap();
        write_parquet(
            &dir.path().join("a.parquet"),
            &[1, 2],
            &[None, Some(f64::INFINITY)],
            &[true, true],
            &["x", "y"],
        );
        let e = error(dir.path());
        assert!(
            e.contains("a.parquet: row 2, column `score`: inf is not a finite number"),
            "{e}"
        );
    }

    #[test]
    fn dates_nested_columns_and_binary_are_refused_by_name() {
        for (schema, expected) in [
            (
                "REQUIRED INT32 day (DATE);",
                "column `day` has Parquet type INT32 (DATE)",
            ),
            (
                "REQUIRED BYTE_ARRAY blob;",
                "column `blob` has Parquet type BYTE_ARRAY (binary",
            ),
            (
                "REQUIRED FIXED_LEN_BYTE_ARRAY (16) price (DECIMAL(20, 2));",
                "column `price` has Parquet type FIXED_LEN_BYTE_ARRAY (DECIMAL)",
            ),
            (
                "REQUIRED GROUP pair { REQUIRED INT32 a; }",
                "column `pair` is nested",
            ),
            ("REPEATED INT32 many;", "column `many` is repeated"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let schema = parse_message_type(&format!("message t {{ {schema} }}")).unwrap();
            let file = fs::File::create(dir.path().join("a.parquet")).unwrap();
            let props = Arc::new(WriterProperties::builder().build());
            SerializedFileWriter::new(file, Arc::new(schema), props)
                .unwrap()
                .close()
                .unwrap();
            let e = error(dir.path());
            assert!(e.contains(expected) && e.contains("a.parquet"), "{e}");
        }
    }

    #[test]
    fn a_file_that_is_not_parquet_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.parquet", "id\n1\n");
        let e = error(dir.path());
        assert!(e.contains("a.parquet: not a readable Parquet file"), "{e}");
    }
}
