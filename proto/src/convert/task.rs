//! Task descriptors: `v1::TaskDescriptor` to and from `work::TaskDescriptor`.

use super::WireError;
use crate::mtl::{RowBatch, RowSplit};
use crate::v1;
use crate::work::{Episode, SinusoidTask, Task, TaskDescriptor};

impl From<&TaskDescriptor> for v1::TaskDescriptor {
    fn from(d: &TaskDescriptor) -> Self {
        v1::TaskDescriptor {
            index: d.index,
            data_seed: d.data_seed,
            task: Some(match &d.task {
                Task::Sinusoid(s) => v1::task_descriptor::Task::Sinusoid(v1::SinusoidTask {
                    amplitude: s.amplitude,
                    phase: s.phase,
                }),
                Task::Episode(e) => v1::task_descriptor::Task::Episode(v1::Episode {
                    classes: e.classes.clone(),
                    rotations: e.rotations.iter().map(|&r| r as u32).collect(),
                    shots: e.shots,
                    queries: e.queries,
                    instances: e.instances.clone(),
                }),
                Task::Rows(r) => v1::task_descriptor::Task::Rows(v1::RowBatch {
                    tasks: r.tasks.clone(),
                    first: r.first,
                    count: r.count,
                    split: match r.split {
                        RowSplit::Train => v1::RowSplit::Train,
                        RowSplit::Val => v1::RowSplit::Val,
                        RowSplit::Test => v1::RowSplit::Test,
                    } as i32,
                }),
            }),
        }
    }
}

impl TryFrom<&v1::TaskDescriptor> for TaskDescriptor {
    type Error = WireError;

    fn try_from(wire: &v1::TaskDescriptor) -> Result<Self, WireError> {
        let task = match wire.task.as_ref().ok_or(WireError::Missing("task"))? {
            v1::task_descriptor::Task::Sinusoid(s) => Task::Sinusoid(SinusoidTask {
                amplitude: s.amplitude,
                phase: s.phase,
            }),
            v1::task_descriptor::Task::Episode(e) => Task::Episode(Episode {
                classes: e.classes.clone(),
                // Quarter turns are taken modulo 4: any value names a valid rotation.
                rotations: e.rotations.iter().map(|&r| (r % 4) as u8).collect(),
                shots: e.shots,
                queries: e.queries,
                instances: e.instances.clone(),
            }),
            v1::task_descriptor::Task::Rows(r) => Task::Rows(RowBatch {
                tasks: r.tasks.clone(),
                first: r.first,
                count: r.count,
                split: match v1::RowSplit::try_from(r.split) {
                    Ok(v1::RowSplit::Train) => RowSplit::Train,
                    Ok(v1::RowSplit::Val) => RowSplit::Val,
                    Ok(v1::RowSplit::Test) => RowSplit::Test,
                    Ok(v1::RowSplit::Unspecified) | Err(_) => {
                        return Err(WireError::UnknownValue {
                            field: "rows.split",
                            value: r.split,
                        })
                    }
                },
            }),
        };
        Ok(TaskDescriptor {
            index: wire.index,
            data_seed: wire.data_seed,
            task,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_survives_the_wire() {
        let d = TaskDescriptor {
            index: 4,
            data_seed: 99,
            task: Task::Sinusoid(SinusoidTask {
                amplitude: 2.5,
                phase: 1.0,
            }),
        };
        assert_eq!(
            TaskDescriptor::try_from(&v1::TaskDescriptor::from(&d)),
            Ok(d)
        );
        let e = TaskDescriptor {
            index: 0,
            data_seed: 1,
            task: Task::Episode(Episode {
                classes: vec![4, 9],
                rotations: vec![0, 3],
                shots: 1,
                queries: 2,
                instances: vec![5, 1, 0, 7, 2, 3],
            }),
        };
        assert_eq!(
            TaskDescriptor::try_from(&v1::TaskDescriptor::from(&e)),
            Ok(e)
        );
        let rows = TaskDescriptor {
            index: 2,
            data_seed: 5,
            task: Task::Rows(RowBatch {
                tasks: vec![0, 2],
                first: 640,
                count: 64,
                split: RowSplit::Val,
            }),
        };
        assert_eq!(
            TaskDescriptor::try_from(&v1::TaskDescriptor::from(&rows)),
            Ok(rows)
        );
        let empty = v1::TaskDescriptor::default();
        assert_eq!(
            TaskDescriptor::try_from(&empty),
            Err(WireError::Missing("task"))
        );
    }
}
