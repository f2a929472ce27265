//! Model architectures as both sides see them: parameter layouts (names, shapes, roles) and their initialisation, without libtorch.

pub mod conv4;
pub mod layout;
pub mod mlp;

pub use conv4::Conv4;
pub use layout::{Init, ParamLayout, ParamSlot, Role};
pub use mlp::Mlp;

/// A network architecture. The coordinator initialises, checkpoints and exports its parameters
/// from the layout alone; workers evaluate it with libtorch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Model {
    Mlp(Mlp),
    Conv4(Conv4),
}

impl Model {
    pub fn layout(&self) -> ParamLayout {
        match self {
            Model::Mlp(mlp) => mlp.layout(),
            Model::Conv4(conv4) => conv4.layout(),
        }
    }
}
