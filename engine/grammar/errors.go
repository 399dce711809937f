package grammar

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error the package returns wraps one of them (errors.Is).
var (
	// ErrInvalidSchema: the JSON Schema is not valid JSON or not a valid schema.
	ErrInvalidSchema = errors.New("grammar: invalid JSON schema")
	// ErrUnsupported: a schema keyword (or value) the engine cannot enforce. The error is
	// an *UnsupportedError naming the keyword and where it is.
	ErrUnsupported = errors.New("grammar: unsupported")
	// ErrInvalidRegex: a regular expression that does not parse as RE2 syntax, or uses a
	// construct a byte automaton cannot express (backreferences cannot occur in RE2;
	// anchors inside the pattern, word boundaries).
	ErrInvalidRegex = errors.New("grammar: invalid regular expression")
	// ErrInvalidGrammar: a GBNF grammar that does not parse, names an undefined rule, is
	// left-recursive, or is too large.
	ErrInvalidGrammar = errors.New("grammar: invalid grammar")
	// ErrRejected: Advance was given a token the grammar does not allow in this state.
	ErrRejected = errors.New("grammar: token rejected")
	// ErrTooLarge: the grammar's automata would exceed the engine's size limits.
	ErrTooLarge = errors.New("grammar: grammar too large")
)

// UnsupportedError names a JSON Schema keyword the engine cannot enforce and the JSON
// pointer of the schema that uses it. It wraps ErrUnsupported.
type UnsupportedError struct {
	Keyword string // e.g. "uniqueItems"
	Path    string // JSON pointer of the (sub)schema, "" for the root
	Detail  string // optional explanation
}

func (e *UnsupportedError) Error() string {
	path := e.Path
	if path == "" {
		path = "#"
	}
	msg := fmt.Sprintf("grammar: unsupported JSON schema keyword %q at %s", e.Keyword, path)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

func (e *UnsupportedError) Unwrap() error { return ErrUnsupported }
