//! Links binaries and tests that use libtorch so that they run without LD_LIBRARY_PATH and see CUDA.
//!
//! Shared by the root package and the worker crate (`build = "../build.rs"` there).

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    // torch-sys (`links = "tch"`) tells its direct dependents where libtorch's libraries are.
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    // Nothing references libtorch_cuda's symbols directly (kernels register themselves when it
    // loads), so the linker's --as-needed would drop it and every program would see no GPU.
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
