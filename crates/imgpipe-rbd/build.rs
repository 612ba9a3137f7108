//! Links librbd and librados only when the `librbd` feature is on, so the default build of the
//! workspace needs no Ceph development packages.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_LIBRBD").is_some() {
        // Debian 12: librbd-dev + librados-dev install librbd.so (librbd 1.16, Ceph 16.2) and
        // librados.so. The FFI in src/ffi.rs uses only C API calls that exist since librbd 1.12.
        println!("cargo:rustc-link-lib=dylib=rbd");
        println!("cargo:rustc-link-lib=dylib=rados");
    }
}
