//! Generates the CRI client (`tenetctl agent`) from `proto/cri.proto`, only
//! when the `compiler` feature builds tenetctl: the `tenet` CNI binary
//! (`--no-default-features`) runs no protoc and carries no CRI code.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "compiler")]
    {
        println!("cargo:rerun-if-changed=proto/cri.proto");
        tonic_prost_build::configure()
            .build_server(false)
            .compile_protos(&["proto/cri.proto"], &["proto"])
            .expect("compiling proto/cri.proto (is protoc installed? make deps)");
    }
}
