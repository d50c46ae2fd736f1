//! Compiles the CRI subset (`proto/cri.proto`) for the node agent's CRI
//! client (`src/cri/`). Only the client is generated.

fn main() {
    println!("cargo:rerun-if-changed=proto/cri.proto");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/cri.proto"], &["proto"])
        .expect("compiling proto/cri.proto (needs protoc: Debian protobuf-compiler)");
}
