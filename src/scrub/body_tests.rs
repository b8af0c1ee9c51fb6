use std::io::Write;

use http_body_util::StreamBody;

use super::*;
use crate::error::{ERROR_HEADER, WITHHELD};
use crate::secret::Secret;

const KEY: &str = "abcdef0123456789abcdef0123456789";

fn scrubber() -> Arc<Scrubber> {
    Arc::new(Scrubber::new([&Secret::parse(KEY).unwrap()]).unwrap())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
    w.write_all(data).unwrap();
    drop(w);
    out
}

/// A body of the given data pieces, then optional trailers.
fn upstream(pieces: Vec<Vec<u8>>, trailers: Option<HeaderMap>) -> ProxyBody {
    let mut frames: Vec<Result<Frame<Bytes>, BoxError>> =
        pieces.into_iter().map(|p| Ok(Frame::data(Bytes::from(p)))).collect();
    frames.extend(trailers.map(|t| Ok(Frame::trailers(t))));
    StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(*n, HeaderValue::from_static(v));
    }
    h
}

/// Runs `error_body` and returns the headers, body bytes and trailers the caller gets.
async fn answer(mut h: HeaderMap, body: ProxyBody) -> (HeaderMap, Vec<u8>, Option<HeaderMap>) {
    let out = error_body(&scrubber(), "test", body, &mut h).await;
    let collected = out.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (h, collected.to_bytes().to_vec(), trailers)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn content_codings_are_read_from_every_line_and_token() {
    let of = |pairs: &[(&'static str, &'static str)]| coding(&headers(pairs));
    assert_eq!(of(&[]), Ok(Coding::Identity));
    assert_eq!(of(&[("content-encoding", "identity")]), Ok(Coding::Identity));
    assert_eq!(of(&[("content-encoding", "GZIP")]), Ok(Coding::Gzip));
    assert_eq!(of(&[("content-encoding", "x-gzip, identity")]), Ok(Coding::Gzip));
    assert_eq!(of(&[("content-encoding", "deflate")]), Ok(Coding::Deflate));
    assert_eq!(of(&[("content-encoding", " br ")]), Ok(Coding::Brotli));
    assert_eq!(of(&[("content-encoding", "x-bogus")]), Err(Withheld::Coding));
    assert_eq!(of(&[("content-encoding", "zstd")]), Err(Withheld::Coding));
    assert_eq!(of(&[("content-encoding", "gzip, br")]), Err(Withheld::Coding));
    assert_eq!(of(&[("content-encoding", "gzip"), ("content-encoding", "gzip")]), Err(Withheld::Coding));
}

#[test]
fn each_coding_decodes_and_a_bomb_or_garbage_does_not() {
    let plain = format!("{{\"error\":\"bad key {KEY}\"}}").repeat(20).into_bytes();
    assert_eq!(decode(Coding::Gzip, &gzip(&plain)), Ok(plain.clone()));
    assert_eq!(decode(Coding::Deflate, &zlib(&plain)), Ok(plain.clone()));
    assert_eq!(decode(Coding::Deflate, &raw_deflate(&plain)), Ok(plain.clone()));
    assert_eq!(decode(Coding::Brotli, &brotli(&plain)), Ok(plain.clone()));
    assert_eq!(decode(Coding::Gzip, &plain), Err(Withheld::Undecodable));
    assert_eq!(decode(Coding::Brotli, b"\xff\xff\xff\xff not brotli"), Err(Withheld::Undecodable));
    let exactly = vec![b'a'; SCRUB_LIMIT];
    assert_eq!(decode(Coding::Gzip, &gzip(&exactly)).map(|p| p.len()), Ok(SCRUB_LIMIT));
    // 64 MiB of zeros: a few KiB on the wire; decoding stops one byte past the limit.
    let bomb = gzip(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < SCRUB_LIMIT);
    assert_eq!(decode(Coding::Gzip, &bomb), Err(Withheld::TooLarge));
}

#[test]
fn accept_encoding_keeps_only_codings_keygate_decodes() {
    let narrowed = |value: &'static str| {
        let mut h = headers(&[("accept-encoding", value)]);
        accept_encoding(&mut h);
        h.get_all("accept-encoding").iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(narrowed("gzip, deflate, br, zstd"), ["gzip, deflate, br"]);
    assert_eq!(narrowed("zstd;q=1.0, gzip;q=0.5, *;q=0.1"), ["gzip;q=0.5"]);
    assert_eq!(narrowed("zstd"), ["identity"]);
    assert_eq!(narrowed("*"), ["identity"]);
    assert_eq!(narrowed("gzip,BR"), ["gzip,BR"], "nothing to narrow: left byte for byte");
    // The same line again (kept from the last call), then another, then the first.
    for _ in 0..2 {
        assert_eq!(narrowed("zstd, gzip"), ["gzip"]);
    }
    assert_eq!(narrowed("gzip"), ["gzip"]);
    assert_eq!(narrowed("zstd, gzip"), ["gzip"]);
    assert_eq!(narrowed("zstd"), ["identity"]);
    let mut two = headers(&[("accept-encoding", "gzip"), ("accept-encoding", "compress")]);
    accept_encoding(&mut two);
    assert_eq!(two.get_all("accept-encoding").iter().count(), 1);
    assert_eq!(two["accept-encoding"], "gzip");
    let mut none = HeaderMap::new();
    accept_encoding(&mut none);
    assert!(none.is_empty(), "an absent header stays absent");
}

#[tokio::test]
async fn a_small_body_of_any_type_is_scrubbed_whole() {
    let body = format!("no type here, key {KEY} and {}", KEY.to_ascii_uppercase()).into_bytes();
    let len: &'static str = Box::leak(body.len().to_string().into_boxed_str());
    let (h, out, _) = answer(headers(&[("content-length", len)]), upstream(vec![body], None)).await;
    assert_eq!(text(&out), "no type here, key [REDACTED] and [REDACTED]");
    assert!(h.get("content-length").is_none(), "the old length no longer holds");
}

#[tokio::test]
async fn compressed_bodies_are_sent_decoded_and_scrubbed() {
    let plain = format!("{{\"message\":\"bad key {KEY}\"}}").into_bytes();
    for (label, encoded) in [
        ("gzip", gzip(&plain)),
        ("deflate", zlib(&plain)),
        ("deflate", raw_deflate(&plain)),
        ("br", brotli(&plain)),
    ] {
        let mut h = headers(&[("content-type", "application/json")]);
        h.insert("content-encoding", HeaderValue::from_static(label));
        let (h, out, _) = answer(h, upstream(vec![encoded], None)).await;
        assert_eq!(text(&out), "{\"message\":\"bad key [REDACTED]\"}", "{label}");
        assert!(h.get("content-encoding").is_none(), "{label}");
        assert!(h.get(ERROR_HEADER).is_none(), "{label}");
    }
}

#[tokio::test]
async fn bodies_keygate_cannot_read_are_withheld() {
    let plain = format!("key {KEY}").into_bytes();
    let big_gzip = {
        // Random-looking bytes do not compress: more than the limit on the wire.
        let mut x: u32 = 1;
        let noise: Vec<u8> = (0..SCRUB_LIMIT + 1024)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect();
        gzip(&noise)
    };
    let cases = [
        ("x-bogus", plain.clone(), "coding"),
        ("gzip, br", gzip(&brotli(&plain)), "coding"),
        ("gzip", plain.clone(), "decode"),
        ("gzip", gzip(&vec![b'k'; 1 << 20]), "larger"),
        ("gzip", big_gzip, "larger"),
    ];
    for (label, body, why) in cases {
        let h = headers(&[("content-type", "text/plain"), ("content-encoding", label)]);
        let pieces = body.chunks(16 * 1024).map(<[u8]>::to_vec).collect();
        let (h, out, _) = answer(h, upstream(pieces, None)).await;
        assert_eq!(h[ERROR_HEADER], WITHHELD, "{label}");
        assert!(h.get("content-encoding").is_none(), "{label}");
        assert_eq!(h["content-type"], "application/json");
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["error"], WITHHELD);
        assert!(json["message"].as_str().unwrap().contains(why), "{label}: {json}");
        assert!(!text(&out).contains(KEY));
    }
}

#[tokio::test]
async fn an_empty_body_passes_whatever_its_label() {
    let h = headers(&[("content-encoding", "x-bogus"), ("content-length", "0")]);
    let (h, out, _) = answer(h, upstream(vec![], None)).await;
    assert!(out.is_empty());
    assert_eq!(h["content-encoding"], "x-bogus");
    assert!(h.get(ERROR_HEADER).is_none());
}

#[tokio::test]
async fn a_long_body_is_scrubbed_as_it_streams_even_across_pieces() {
    // 200 KiB in pieces of 1000 bytes: keys sit across piece boundaries everywhere.
    let unit = format!("..{KEY}..{}", KEY.to_ascii_uppercase());
    let text_in = unit.repeat(200 * 1024 / unit.len());
    let pieces: Vec<Vec<u8>> = text_in.as_bytes().chunks(1000).map(<[u8]>::to_vec).collect();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("1"));
    let h = headers(&[("content-length", "204800")]);
    let (h, out, got_trailers) = answer(h, upstream(pieces, Some(trailers))).await;
    let expected = text_in.replace(KEY, REDACTED_TEST).replace(&KEY.to_ascii_uppercase(), REDACTED_TEST);
    assert_eq!(text(&out), expected);
    assert!(h.get("content-length").is_none());
    assert_eq!(got_trailers.unwrap()["x-checksum"], "1", "trailers still follow the body");
}

const REDACTED_TEST: &str = super::super::REDACTED;

#[tokio::test]
async fn trailers_of_a_small_body_are_kept() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-done", HeaderValue::from_static("yes"));
    let (_, out, got) = answer(HeaderMap::new(), upstream(vec![b"oops".to_vec()], Some(trailers))).await;
    assert_eq!(out, b"oops");
    assert_eq!(got.unwrap()["x-done"], "yes");
}

#[tokio::test]
async fn trailers_are_scrubbed_and_data_is_not() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-echo", HeaderValue::from_static("key=abcdef0123456789abcdef0123456789"));
    trailers.insert("x-abcdef0123456789abcdef0123456789", HeaderValue::from_static("1"));
    trailers.insert("x-done", HeaderValue::from_static("yes"));
    let data = format!("2xx data is not read: {KEY}").into_bytes();
    let body = Trailers::new(upstream(vec![data.clone()], Some(trailers)), scrubber());
    let collected = body.collect().await.unwrap();
    let got = collected.trailers().cloned().expect("trailers follow the data");
    assert_eq!(got["x-echo"], "key=[REDACTED]");
    assert!(got.get("x-abcdef0123456789abcdef0123456789").is_none(), "a trailer named after a key goes");
    assert_eq!(got["x-done"], "yes");
    assert_eq!(collected.to_bytes().to_vec(), data);
}
