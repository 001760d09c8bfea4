//! Adding an annotated RPC to a .proto is all it takes: this test compiles a
//! contract the gateway has never seen and finds it on REST (routing and JSON
//! transcoding) and in the OpenAPI document, with no gateway code for it.

use std::collections::BTreeSet;
use std::path::PathBuf;

use prost_reflect::DescriptorPool;
use shop_gateway::routes::{self, Resolved};
use shop_gateway::{openapi, transcode};

fn demo_pool() -> DescriptorPool {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut compiler = protox::Compiler::new([root.join("tests/fixtures"), root.join("../proto")])
        .expect("compiler");
    compiler.include_imports(true);
    compiler
        .open_files(["shop/demo/v1/demo.proto"])
        .expect("compile the test proto");
    DescriptorPool::decode(compiler.encode_file_descriptor_set().as_slice()).expect("pool")
}

#[test]
fn a_new_annotated_rpc_appears_on_rest_and_in_openapi() {
    let pool = demo_pool();
    let routes = routes::from_descriptors(&pool).expect("routes");
    assert_eq!(routes.len(), 2, "the binding and its additional binding");

    let Resolved::Found(route, vars) = routes::resolve(
        &routes,
        &http::Method::POST,
        "/v1/shelves/fiction/books:shelve",
    ) else {
        panic!("the new RPC is routed");
    };
    assert_eq!(route.grpc_path(), "/shop.demo.v1.DemoService/Shelve");
    assert_eq!(
        vars,
        vec![("name".to_owned(), "shelves/fiction".to_owned())]
    );
    let request = transcode::build_request(
        route,
        br#"{"isbn":"978-0","title":"Dune","pages":"412"}"#,
        &vars,
        Some("dryRun=true"),
    )
    .expect("transcoded");
    assert_eq!(
        serde_json::to_value(&request).expect("json"),
        serde_json::json!({"name": "shelves/fiction", "book": {"isbn": "978-0", "title": "Dune", "pages": "412"}, "dryRun": true})
    );

    let Resolved::Found(put, vars) =
        routes::resolve(&routes, &http::Method::PUT, "/v1/books/978-1")
    else {
        panic!("the additional binding is routed");
    };
    let request =
        transcode::build_request(put, br#"{"title":"Emma"}"#, &vars, None).expect("transcoded");
    assert_eq!(
        serde_json::to_value(&request).expect("json"),
        serde_json::json!({"book": {"isbn": "978-1", "title": "Emma"}})
    );

    let doc = openapi::document(&routes, &BTreeSet::new());
    let op = &doc["paths"]["/v1/{name}/books:shelve"]["post"];
    assert_eq!(op["operationId"], "DemoService_Shelve");
    assert_eq!(
        op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/shop.demo.v1.Book"
    );
    assert!(doc["paths"]["/v1/books/{book.isbn}"]["put"].is_object());
    assert_eq!(
        doc["components"]["schemas"]["shop.demo.v1.Book"]["properties"]["pages"]["type"], "string",
        "int64 as string"
    );
    assert!(
        op["security"].is_array(),
        "not public unless listed in PUBLIC_METHODS"
    );
}
