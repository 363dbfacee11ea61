package idempotency

import (
	"errors"
	"strings"
)

// MaxKeyLength is the longest key accepted, in characters.
const MaxKeyLength = 255

// KeyError says why an Idempotency-Key field is not a key.
type KeyError struct{ Reason string }

func (e *KeyError) Error() string { return "Idempotency-Key: " + e.Reason }

// ParseKey returns the key an Idempotency-Key field value carries: a
// Structured Field String (RFC 8941, 3.3.3) of printable ASCII in double
// quotes, where \" and \\ stand for " and \. Spaces around the item are
// allowed; parameters are not accepted, nor an empty key or one longer
// than MaxKeyLength. The values of several field lines, joined with a
// comma, are a list and not one key.
func ParseKey(field string) (string, error) {
	s := strings.Trim(field, " \t")
	if s == "" {
		return "", &KeyError{"the field is empty"}
	}
	if s[0] != '"' {
		return "", &KeyError{`the key must be a quoted string, such as "8e03978e-40d5-43e8-bc93-6894a57f9324"`}
	}
	var b strings.Builder
	escaped := false
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch {
		case escaped:
			if c != '"' && c != '\\' {
				return "", &KeyError{`only \" and \\ may be escaped in a quoted string`}
			}
			b.WriteByte(c)
			escaped = false
		case c == '\\':
			escaped = true
		case c == '"':
			rest := s[i+1:]
			switch {
			case rest == "":
			case rest[0] == ';':
				return "", &KeyError{"parameters after the key are not accepted"}
			case rest[0] == ',':
				return "", &KeyError{"the field carries more than one value (sent more than once?)"}
			default:
				return "", &KeyError{"characters follow the closing quote"}
			}
			if b.Len() == 0 {
				return "", &KeyError{"the key is empty"}
			}
			if b.Len() > MaxKeyLength {
				return "", &KeyError{errTooLong.Error()}
			}
			return b.String(), nil
		case c < 0x20 || c > 0x7e:
			return "", &KeyError{"the key may hold printable ASCII characters only"}
		default:
			b.WriteByte(c)
		}
		if b.Len() > MaxKeyLength {
			return "", &KeyError{errTooLong.Error()}
		}
	}
	return "", &KeyError{"the closing quote is missing"}
}

var errTooLong = errors.New("the key is longer than 255 characters")
