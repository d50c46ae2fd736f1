//! Generates the CRI client from proto/api.proto (protoc from Debian's
//! `protobuf-compiler`, as etcd-client's build uses).

fn main() {
    println!("cargo:rerun-if-changed=proto/api.proto");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/api.proto"], &["proto"])
        .expect("compile proto/api.proto (needs protoc: Debian package protobuf-compiler)");
}
