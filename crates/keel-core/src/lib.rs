//! keel's domain types: the canonical chat model every wire format translates to and from,
//! and the typed config schema. This crate does no IO (reading the clock aside).

pub mod chat;
pub mod config;
pub mod label;
pub mod schema;

pub use chat::{
    ChatRequest, ChatResponse, ContentPart, EmbedInput, EmbedRequest, EmbedResponse, FinishReason,
    ImageSource, Message, ResponseFormat, Role, StreamEvent, ToolCall, ToolChoice, ToolDef, Usage,
};

/// Milliseconds since the Unix epoch, by the system clock (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// `bytes` as lower-case hex, two digits a byte (a digest's usual spelling), in one allocation.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(DIGITS[usize::from(b >> 4)] as char);
        text.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    text
}

/// A 128-bit id as 32 hex digits: 48 bits of Unix milliseconds, then 80 random bits.
/// Ids sort by time, so stores index them append-mostly (like UUIDv7).
pub fn time_ordered_id(unix_ms: u64, random: u128) -> String {
    format!("{:012x}{:020x}", unix_ms & 0xffff_ffff_ffff, random & ((1u128 << 80) - 1))
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_spells_each_byte_in_two_digits() {
        assert_eq!(super::hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(super::hex(&[]), "");
    }
}
