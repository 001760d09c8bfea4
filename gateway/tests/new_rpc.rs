//! Adding an annotated RPC to a .proto is all it takes: this test compiles a
//! contract the gateway has never seen and finds it on REST (routing and JSON
//! transcoding) and in the OpenAPI document, with no gateway code for it.

use std::collections::BTreeSet;
use std::path::PathBuf;

use prost_reflect::DescriptorPool;
use serde_json::Value;
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
    assert_eq!(
        routes.iter().filter(|r| r.rpc.name() == "Shelve").count(),
        3,
        "the binding and its two additional bindings"
    );

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
        transcode::UnknownQuery::Reject,
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
    let request = transcode::build_request(
        put,
        br#"{"title":"Emma"}"#,
        &vars,
        None,
        transcode::UnknownQuery::Reject,
    )
    .expect("transcoded");
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
    // A nested path variable is one OpenAPI parameter (tools read `{a.b}` as
    // attribute access).
    let put = &doc["paths"]["/v1/books/{book_isbn}"]["put"];
    assert_eq!(put["parameters"][0]["name"], "book_isbn", "{put}");
    // An int64 is printed as a decimal string and parsed from a number too;
    // a field that may be left out may also be null.
    let pages = &doc["components"]["schemas"]["shop.demo.v1.Book"]["properties"]["pages"]["anyOf"];
    let kinds: Vec<&Value> = pages
        .as_array()
        .expect("forms")
        .iter()
        .map(|f| &f["type"])
        .collect();
    assert_eq!(kinds, ["string", "integer", "null"], "{pages}");
    assert!(
        op["security"].is_array(),
        "not public unless listed in PUBLIC_METHODS"
    );
}

fn found<'a>(
    routes: &'a [routes::Route],
    method: http::Method,
    path: &str,
) -> (&'a routes::Route, Vec<(String, String)>) {
    match routes::resolve(routes, &method, path) {
        Resolved::Found(route, vars) => (route, vars),
        other => panic!("{method} {path}: {other:?}"),
    }
}

#[test]
fn precedence_is_path_then_body_then_query() {
    let routes = routes::from_descriptors(&demo_pool()).expect("routes");
    // The path's isbn wins over the body's.
    let (put, vars) = found(&routes, http::Method::PUT, "/v1/books/978-1");
    let request = transcode::build_request(
        put,
        br#"{"isbn":"from-body","title":"Emma","tags":["a"]}"#,
        &vars,
        // The body owns `book`: none of these may change it. `labels` is the
        // query's alone, and its repeats make a list.
        Some("book.title=Q&book.tags=q&labels=x&labels=y&book.isbn=Z"),
        transcode::UnknownQuery::Reject,
    )
    .expect("transcoded");
    assert_eq!(
        serde_json::to_value(&request).expect("json"),
        serde_json::json!({"book": {"isbn": "978-1", "title": "Emma", "tags": ["a"]}, "labels": ["x", "y"]})
    );
}

#[test]
fn unknown_query_parameters_are_ignored_unless_strict() {
    let routes = routes::from_descriptors(&demo_pool()).expect("routes");
    let (route, vars) = found(&routes, http::Method::GET, "/v1/shelves/s1/books:count");
    let query = Some("_=1700000000&utm_source=mail");
    let request =
        transcode::build_request(route, b"", &vars, query, transcode::UnknownQuery::Ignore)
            .expect("ignored");
    assert_eq!(
        serde_json::to_value(&request).expect("json"),
        serde_json::json!({"name": "shelves/s1"})
    );
    let refused =
        transcode::build_request(route, b"", &vars, query, transcode::UnknownQuery::Reject)
            .expect_err("strict");
    assert_eq!(refused.field, "_");
}

#[test]
fn response_body_naming_a_scalar_field_returns_that_field() {
    let pool = demo_pool();
    let routes = routes::from_descriptors(&pool).expect("routes");
    let (route, _) = found(&routes, http::Method::GET, "/v1/shelves/s1/books:count");
    let output = pool
        .get_message_by_name("shop.demo.v1.CountBooksResponse")
        .expect("message");
    let response = prost_reflect::DynamicMessage::deserialize(
        output,
        serde_json::json!({"count": "7", "shelf": "s1"}),
    )
    .expect("response");
    assert_eq!(
        transcode::response_json(route, &response),
        serde_json::json!("7"),
        "the int64 field alone, in its proto3 JSON form"
    );
    let doc = openapi::document(&routes, &BTreeSet::new());
    assert_eq!(
        doc["paths"]["/v1/{name}/books:count"]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"],
        serde_json::json!({"anyOf": [
            {"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$"},
            {"type": "integer", "format": "int64"}
        ]}),
        "the document describes the int64 field alone"
    );
}

#[test]
fn every_operation_id_is_unique() {
    let routes = routes::from_descriptors(&demo_pool()).expect("routes");
    let doc = openapi::document(&routes, &BTreeSet::new());
    let mut ids = Vec::new();
    for (_, item) in doc["paths"].as_object().expect("paths") {
        for (_, op) in item.as_object().expect("operations") {
            ids.push(op["operationId"].as_str().expect("id").to_owned());
        }
    }
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    assert!(ids.contains(&"DemoService_Shelve_1".to_owned()), "{ids:?}");
    assert!(ids.contains(&"DemoService_Shelve_2".to_owned()), "{ids:?}");
}

#[test]
fn a_custom_rule_of_kind_star_answers_every_method() {
    let routes = routes::from_descriptors(&demo_pool()).expect("routes");
    for method in [http::Method::GET, http::Method::POST, http::Method::DELETE] {
        let (route, vars) = found(&routes, method.clone(), "/v1/echo/hi");
        assert_eq!(route.rpc.name(), "Echo", "{method}");
        assert_eq!(vars, vec![("text".to_owned(), "hi".to_owned())]);
    }
    let doc = openapi::document(&routes, &BTreeSet::new());
    let item = &doc["paths"]["/v1/echo/{text}"];
    assert_eq!(item["delete"]["operationId"], "DemoService_Echo_delete");
    assert!(item["get"].is_object() && item["patch"].is_object());
}

#[test]
fn well_known_types_are_described_by_their_json_forms() {
    let routes = routes::from_descriptors(&demo_pool()).expect("routes");
    let doc = openapi::document(&routes, &BTreeSet::new());
    let props = &doc["components"]["schemas"]["shop.demo.v1.Described"]["properties"];
    // None of these is required, so each may also be sent as null.
    let expect = [
        ("mask", "string"),
        ("nickname", "string"),
        ("flag", "boolean"),
        ("ratio", "number"),
        ("blob", "string"),
        ("attributes", "object"),
        ("list", "array"),
        ("packed", "object"),
        ("wait", "string"),
        ("at", "string"),
        ("nothing", "object"),
    ];
    for (field, kind) in expect {
        assert_eq!(
            props[field]["type"],
            serde_json::json!([kind, "null"]),
            "{field}: {}",
            props[field]
        );
    }
    let big: Vec<&Value> = props["big"]["anyOf"]
        .as_array()
        .expect("an Int64Value's forms")
        .iter()
        .map(|f| &f["type"])
        .collect();
    assert_eq!(big, ["string", "integer", "null"], "{}", props["big"]);
    assert!(
        props["anything"].get("type").is_none(),
        "a Value is any JSON"
    );
    assert_eq!(props["packed"]["required"], serde_json::json!(["@type"]));
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    assert!(
        !schemas.keys().any(|k| k.starts_with("google.protobuf.")),
        "no well-known type as an object of its own: {:?}",
        schemas.keys().collect::<Vec<_>>()
    );
    // And the gateway reads the same forms from a body.
    let (route, vars) = found(&routes, http::Method::POST, "/v1/described");
    transcode::build_request(
        route,
        br#"{"mask":"title,book.isbn","nickname":"n","big":"9","attributes":{"a":[1,null]},"anything":3,"packed":{"@type":"type.googleapis.com/google.protobuf.Duration","value":"1s"},"wait":"1.5s","at":"2026-12-02T10:00:00Z"}"#,
        &vars,
        None,
        transcode::UnknownQuery::Reject,
    )
    .expect("proto3 JSON forms of the well-known types");
}

#[test]
fn query_strings_carry_well_known_types_maps_enums_and_bytes() {
    let routes = routes::from_descriptors(&demo_pool()).expect("routes");
    let (route, vars) = found(&routes, http::Method::GET, "/v1/shelves/s1/books:count");
    let build = |query: &str| {
        transcode::build_request(
            route,
            b"",
            &vars,
            Some(query),
            transcode::UnknownQuery::Reject,
        )
    };
    let request = build(
        "since=2026-12-02T10:00:00Z&within=1.5s&fields=title,book.isbn&minPages=100\
         &filters[colour]=red&filters%5Bsize%5D=large&cursor=3q2-7w&kind=KIND_POETRY&flags[7]=true",
    )
    .expect("every kind");
    assert_eq!(
        serde_json::to_value(&request).expect("json"),
        serde_json::json!({
            "name": "shelves/s1",
            "since": "2026-12-02T10:00:00Z",
            "within": "1.500s",
            "fields": "title,book.isbn",
            "minPages": 100,
            "filters": {"colour": "red", "size": "large"},
            "cursor": "3q2+7w==",
            "kind": "KIND_POETRY",
            "flags": {"7": true}
        })
    );
    // An enum by number, as proto3 JSON allows.
    let request = build("kind=1").expect("enum by number");
    assert_eq!(
        serde_json::to_value(&request).expect("json")["kind"],
        "KIND_FICTION"
    );
    for (query, field, says) in [
        ("since=yesterday", "since", "RFC 3339"),
        ("within=5 minutes", "within", "duration"),
        ("minPages=many", "minPages", "32-bit integer"),
        ("cursor=not*base64", "cursor", "base64"),
        ("flags[x]=true", "flags[x]", "32-bit integer"),
        ("filters=red", "filters", "name[key]=value"),
        ("name[x]=1", "name[x]", "not a map field"),
    ] {
        let err = build(query).expect_err(query);
        assert_eq!(err.field, field, "{query}");
        assert!(
            err.description.contains(says),
            "{query}: {}",
            err.description
        );
    }
    // OpenAPI describes them as the query carries them.
    let doc = openapi::document(&routes, &BTreeSet::new());
    let parameters = doc["paths"]["/v1/{name}/books:count"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .clone();
    let param = |name: &str| {
        parameters
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {parameters:?}"))
            .clone()
    };
    assert_eq!(param("since")["schema"]["format"], "date-time");
    assert_eq!(
        param("minPages")["schema"]["type"],
        serde_json::json!(["integer", "null"])
    );
    assert_eq!(param("filters")["style"], "deepObject");
    assert_eq!(param("filters")["schema"]["type"], "object");
    assert_eq!(param("cursor")["schema"]["contentEncoding"], "base64");
}

#[test]
fn field_behavior_makes_required_and_read_only_fields() {
    let routes = routes::from_descriptors(&demo_pool()).expect("routes");
    let doc = openapi::document(&routes, &BTreeSet::new());
    let book = &doc["components"]["schemas"]["shop.demo.v1.Book"];
    assert_eq!(
        book["required"],
        serde_json::json!(["title", "tags"]),
        "isbn is REQUIRED but bound by a path: {book}"
    );
    assert_eq!(book["properties"]["tags"]["minItems"], 1, "{book}");
    assert_eq!(book["properties"]["pages"]["readOnly"], true, "{book}");
    assert!(book["properties"]["title"].get("readOnly").is_none());
}

#[test]
fn a_field_the_path_binds_is_read_only_in_the_body() {
    let pool = DescriptorPool::decode(shop_proto::FILE_DESCRIPTOR_SET).expect("pool");
    let routes = routes::from_descriptors(&pool).expect("routes");
    let doc = openapi::document(&routes, &BTreeSet::new());
    let body = &doc["components"]["schemas"]["shop.order.v1.CancelOrderRequest"];
    assert_eq!(
        body["properties"]["orderId"]["readOnly"], true,
        "the path gives the order id: {body}"
    );
    assert!(
        body["properties"]["reason"].get("readOnly").is_none(),
        "{body}"
    );
    // Sent anyway, the body's id is overruled by the path's.
    let (route, vars) = found(
        &routes,
        http::Method::POST,
        "/v1/orders/0190a6b0-0000-7000-8000-000000000001:cancel",
    );
    let request = transcode::build_request(
        route,
        br#"{"orderId":"not-this-one","reason":"changed my mind"}"#,
        &vars,
        None,
        transcode::UnknownQuery::Reject,
    )
    .expect("transcoded");
    assert_eq!(
        serde_json::to_value(&request).expect("json")["orderId"],
        "0190a6b0-0000-7000-8000-000000000001"
    );
}

#[test]
fn an_http_body_field_takes_the_request_bytes_as_they_came() {
    let routes = routes::from_descriptors(&demo_pool()).expect("routes");
    let (route, vars) = found(&routes, http::Method::PUT, "/v1/shelves/s1/cover");
    assert!(transcode::takes_raw_body(route));
    // Not JSON, not even UTF-8: the bytes are the upload's.
    let png = bytes::Bytes::from_static(b"\x89PNG\r\n\x1a\n\xff\x00");
    let request = transcode::build_raw_request(
        route,
        &png,
        "image/png",
        &vars,
        Some("caption=Front"),
        transcode::UnknownQuery::Reject,
    )
    .expect("a raw route")
    .expect("transcoded");
    let cover = request
        .get_field_by_name("cover")
        .expect("cover")
        .into_owned();
    let prost_reflect::Value::Message(cover) = cover else {
        panic!("cover is a message");
    };
    assert_eq!(
        transcode::http_body_parts(&cover),
        ("image/png".to_owned(), png)
    );
    let json = serde_json::to_value(&request).expect("json");
    assert_eq!(json["name"], "shelves/s1");
    assert_eq!(json["caption"], "Front", "the query fills the other fields");
    // A JSON route is no raw one.
    let (shelve, _) = found(&routes, http::Method::POST, "/v1/shelves/s1/books:shelve");
    assert!(!transcode::takes_raw_body(shelve));
    // OpenAPI: any bytes.
    let doc = openapi::document(&routes, &BTreeSet::new());
    let body = &doc["paths"]["/v1/{name}/cover"]["put"]["requestBody"];
    assert_eq!(
        body["content"]["*/*"]["schema"]["format"], "binary",
        "{body}"
    );
}
