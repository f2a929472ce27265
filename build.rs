//! Links the `outerloop` binary and its tests with an rpath to libtorch, so they run without LD_LIBRARY_PATH.

fn main() {
    // torch-sys (`links = "tch"`) tells its direct dependents where libtorch's libraries are.
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
