//! The S3 test harness itself: a [`TestBucket`] on a real S3-protocol server stores, lists
//! and returns objects, and a [`TcpProxy`] in front of it passes, refuses, and cuts uploads
//! midway without a partial object becoming visible.

use bytes::Bytes;
use integration_tests::proxy::TcpProxy;
use integration_tests::s3::TestBucket;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn bucket_put_list_get() {
    let bucket = TestBucket::new().expect("test bucket");
    assert!(bucket.endpoint().starts_with("http://127.0.0.1:"));
    assert_eq!(
        bucket.url("tenants/t1/"),
        format!("s3://{}/tenants/t1", bucket.bucket())
    );
    let env = bucket.env();
    assert!(env.contains(&("AWS_ENDPOINT_URL".into(), bucket.endpoint().into())));
    assert!(env.contains(&("AWS_ALLOW_HTTP".into(), "true".into())));

    assert_eq!(bucket.list_blocking("").expect("list empty"), vec![]);

    let store = bucket.store().expect("store");
    runtime().block_on(async {
        store
            .put(
                &ObjectPath::from("a/one"),
                PutPayload::from_static(b"hello"),
            )
            .await
            .expect("put a/one");
    });
    bucket
        .put_blocking("a/two", Bytes::from(vec![7u8; 3000]))
        .expect("put a/two");
    bucket
        .put_blocking("b/three", Bytes::from_static(b"x"))
        .expect("put b/three");

    assert_eq!(
        bucket.list_blocking("a").expect("list a"),
        vec![("a/one".to_string(), 5), ("a/two".to_string(), 3000)]
    );
    assert_eq!(bucket.list_blocking("").expect("list all").len(), 3);
    assert_eq!(
        bucket.get_blocking("a/one").expect("get"),
        Bytes::from_static(b"hello")
    );
    assert!(bucket.get_blocking("a/missing").is_err());
}

#[test]
fn proxy_pass_refuse_cut() {
    let bucket = TestBucket::new().expect("test bucket");
    let target = bucket.endpoint().trim_start_matches("http://").to_string();
    let proxy = TcpProxy::start(&target).expect("proxy");
    assert_eq!(
        proxy.endpoint(),
        format!("http://127.0.0.1:{}", proxy.port())
    );
    let env = bucket.env_with_endpoint(&proxy.endpoint());
    assert!(env.contains(&("AWS_ENDPOINT_URL".into(), proxy.endpoint())));
    let via = bucket
        .store_via(&proxy.endpoint())
        .expect("store via proxy");
    let rt = runtime();
    let put = |path: &str, data: Bytes| {
        rt.block_on(via.put(&ObjectPath::from(path), PutPayload::from(data)))
    };

    // Pass: the object arrives, and really went through the proxy.
    put("pass/obj", Bytes::from_static(b"through the proxy")).expect("put in pass mode");
    assert!(proxy.connections() >= 1);
    assert_eq!(
        bucket.get_blocking("pass/obj").expect("get"),
        Bytes::from_static(b"through the proxy")
    );

    // Refuse: the store is down, also for the connection the client has pooled.
    proxy.refuse();
    put("refuse/obj", Bytes::from_static(b"nope")).expect_err("put must fail in refuse mode");
    assert_eq!(bucket.list_blocking("refuse").expect("list"), vec![]);

    // Cut after 64 KiB: a 1 MiB upload breaks midway and leaves nothing behind.
    proxy.cut_after(64 * 1024);
    put("cut/big", Bytes::from(vec![0x5a; 1024 * 1024])).expect_err("put must be cut");
    assert_eq!(bucket.list_blocking("cut").expect("list"), vec![]);
    assert!(bucket.get_blocking("cut/big").is_err());

    // Back to pass: the same client works again.
    proxy.pass();
    put("pass/again", Bytes::from_static(b"ok")).expect("put after pass");
    assert_eq!(bucket.list_blocking("pass").expect("list").len(), 2);
}
