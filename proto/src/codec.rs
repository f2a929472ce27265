//! The gRPC codec of `outerloop.v1`: prost's, except that an outgoing message's buffer is sized once for the whole message.
//!
//! tonic encodes into a buffer that starts small and doubles as prost writes into it, each
//! doubling copying what was written so far: for a 40 MB chunk result that is about 40 MB of
//! copies more than the encoding itself, on every message. Every message knows its encoded
//! length, so the buffer is reserved for it first and each byte is written once.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstDecoder;

/// [`Codec`] of the generated clients and servers (set in `build.rs`).
#[derive(Debug, Clone)]
pub struct SizedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SizedCodec<T, U> {
    fn default() -> Self {
        SizedCodec(PhantomData)
    }
}

impl<T, U> Codec for SizedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SizedEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SizedEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        // Decoding already reserves a message's whole length from its gRPC header.
        ProstDecoder::default()
    }
}

/// Encodes a message into a buffer reserved for its whole length.
#[derive(Debug, Clone)]
pub struct SizedEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for SizedEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding a message: {e}")))
    }
}
