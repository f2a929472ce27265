//! Dataset manifests: `v1::DatasetManifest` to and from `dataset::Manifest`.

use super::WireError;
use crate::dataset::{ClassEntry, ColumnEntry, Layout, Level, Manifest, Partition, TableManifest};
use crate::v1;

impl From<Layout> for v1::DatasetLayout {
    fn from(layout: Layout) -> Self {
        match layout {
            Layout::Omniglot => v1::DatasetLayout::Omniglot,
            Layout::Folders => v1::DatasetLayout::Folders,
            Layout::Table => v1::DatasetLayout::Table,
        }
    }
}

pub(super) fn layout(value: i32) -> Result<Layout, WireError> {
    match v1::DatasetLayout::try_from(value) {
        Ok(v1::DatasetLayout::Omniglot) => Ok(Layout::Omniglot),
        Ok(v1::DatasetLayout::Folders) => Ok(Layout::Folders),
        Ok(v1::DatasetLayout::Table) => Ok(Layout::Table),
        _ => Err(WireError::UnknownValue {
            field: "dataset layout",
            value,
        }),
    }
}

impl From<Partition> for v1::Partition {
    fn from(partition: Partition) -> Self {
        match partition {
            Partition::Background => v1::Partition::Background,
            Partition::Evaluation => v1::Partition::Evaluation,
            Partition::Train => v1::Partition::Train,
            Partition::Val => v1::Partition::Val,
            Partition::Test => v1::Partition::Test,
        }
    }
}

fn partition(value: i32) -> Result<Partition, WireError> {
    match v1::Partition::try_from(value) {
        Ok(v1::Partition::Background) => Ok(Partition::Background),
        Ok(v1::Partition::Evaluation) => Ok(Partition::Evaluation),
        Ok(v1::Partition::Train) => Ok(Partition::Train),
        Ok(v1::Partition::Val) => Ok(Partition::Val),
        Ok(v1::Partition::Test) => Ok(Partition::Test),
        _ => Err(WireError::UnknownValue {
            field: "class partition",
            value,
        }),
    }
}

impl From<&Manifest> for v1::DatasetManifest {
    fn from(m: &Manifest) -> Self {
        v1::DatasetManifest {
            name: m.name.clone(),
            layout: v1::DatasetLayout::from(m.layout) as i32,
            fingerprint: m.fingerprint.clone(),
            classes: m
                .classes
                .iter()
                .map(|c| v1::ClassEntry {
                    name: c.name.clone(),
                    partition: v1::Partition::from(c.partition) as i32,
                    instances: c.instances,
                })
                .collect(),
            table: m.table.as_ref().map(|t| v1::TableManifest {
                rows: t.rows,
                columns: t
                    .columns
                    .iter()
                    .map(|c| v1::TableColumn {
                        name: c.name.clone(),
                        numeric: c.numeric,
                        missing: c.missing,
                        many_levels: c.levels.is_none(),
                        levels: c
                            .levels
                            .iter()
                            .flatten()
                            .map(|l| v1::TableLevel {
                                value: l.value.clone(),
                                count: l.count,
                            })
                            .collect(),
                    })
                    .collect(),
            }),
        }
    }
}

impl TryFrom<&v1::DatasetManifest> for Manifest {
    type Error = WireError;

    fn try_from(wire: &v1::DatasetManifest) -> Result<Self, WireError> {
        Ok(Manifest {
            name: wire.name.clone(),
            layout: layout(wire.layout)?,
            fingerprint: wire.fingerprint.clone(),
            classes: wire
                .classes
                .iter()
                .map(|c| {
                    Ok(ClassEntry {
                        name: c.name.clone(),
                        partition: partition(c.partition)?,
                        instances: c.instances,
                    })
                })
                .collect::<Result<_, WireError>>()?,
            table: wire.table.as_ref().map(|t| TableManifest {
                rows: t.rows,
                columns: t
                    .columns
                    .iter()
                    .map(|c| ColumnEntry {
                        name: c.name.clone(),
                        numeric: c.numeric,
                        missing: c.missing,
                        levels: (!c.many_levels).then(|| {
                            c.levels
                                .iter()
                                .map(|l| Level {
                                    value: l.value.clone(),
                                    count: l.count,
                                })
                                .collect()
                        }),
                    })
                    .collect(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_survives_the_wire() {
        let manifest = Manifest {
            name: "omniglot".into(),
            layout: Layout::Omniglot,
            fingerprint: "0123456789abcdef".into(),
            classes: vec![
                ClassEntry {
                    name: "images_background/A/character01".into(),
                    partition: Partition::Background,
                    instances: 20,
                },
                ClassEntry {
                    name: "images_evaluation/B/character01".into(),
                    partition: Partition::Evaluation,
                    instances: 19,
                },
            ],
            table: None,
        };
        let wire = v1::DatasetManifest::from(&manifest);
        assert_eq!(Manifest::try_from(&wire), Ok(manifest));
        let table = Manifest {
            name: "census".into(),
            layout: Layout::Table,
            fingerprint: "ff".into(),
            classes: Vec::new(),
            table: Some(TableManifest {
                rows: 3,
                columns: vec![
                    ColumnEntry {
                        name: "income".into(),
                        numeric: false,
                        missing: 1,
                        levels: Some(vec![Level {
                            value: "high".into(),
                            count: 2,
                        }]),
                    },
                    ColumnEntry {
                        name: "age".into(),
                        numeric: true,
                        missing: 0,
                        levels: None,
                    },
                ],
            }),
        };
        assert_eq!(
            Manifest::try_from(&v1::DatasetManifest::from(&table)),
            Ok(table)
        );
        let bad = v1::DatasetManifest { layout: 42, ..wire };
        assert!(Manifest::try_from(&bad).is_err());
    }
}
