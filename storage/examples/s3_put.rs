//! Uploads a local file as an object (a multipart upload), with the store's settings from the
//! `AWS_*` environment as a job's: `s3_put FILE s3://bucket/key`. The benchmarks put their
//! input on an S3-compatible server with it.

use std::collections::BTreeMap;

use spindle_storage::{ObjectUrl, S3Settings};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, url] = args.as_slice() else {
        return Err("usage: s3_put FILE s3://bucket/key".into());
    };
    let env: BTreeMap<String, String> = std::env::vars().filter(|(name, _)| name.starts_with("AWS_")).collect();
    let object = ObjectUrl::parse(url, &S3Settings::from_env(&env))?;
    let started = std::time::Instant::now();
    let bytes = object.upload_file(std::path::Path::new(file)).await?;
    eprintln!("{bytes} bytes to {object} in {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}
