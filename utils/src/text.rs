//! Text shown to people from what peers sent: cut to a bound, so an error message never
//! carries a client's input back whole.
//!
//! Owns: [`clip`]. Must never: cut inside a UTF-8 character.

/// `s` cut to at most `max` bytes (on a character boundary), with "…" when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_on_a_char_boundary() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!(clip("aé", 2), "a…");
    }
}
