package vision

import (
	"errors"
	"fmt"
)

// Image errors: every error Preprocess returns wraps ErrImage and exactly one of the kinds
// below, so a caller can map it (the server: HTTP 400 naming the content part) with errors.Is.
var (
	// ErrImage is wrapped by every error about an input image (as opposed to a config or
	// device error).
	ErrImage = errors.New("invalid image")
	// ErrCorrupt: the bytes claim a supported format but do not decode (truncated, bad
	// checksum, bad header).
	ErrCorrupt = errors.New("corrupt image data")
	// ErrUnsupportedFormat: not PNG, JPEG, WebP or GIF.
	ErrUnsupportedFormat = errors.New("unsupported image format")
	// ErrTooLarge: more bytes than MaxBytes, or more pixels than MaxPixels (checked from the
	// header before decoding).
	ErrTooLarge = errors.New("image too large")
	// ErrEmpty: no bytes, or an image with zero width or height.
	ErrEmpty = errors.New("empty image")
)

// ImageError is the typed error of Preprocess: Kind is one of ErrCorrupt,
// ErrUnsupportedFormat, ErrTooLarge, ErrEmpty; Format is the detected format ("png",
// "jpeg", "webp", "gif") when known; Err is the decoder's own error, if any.
type ImageError struct {
	Kind   error
	Format string
	Detail string
	Err    error
}

func (e *ImageError) Error() string {
	msg := e.Kind.Error()
	if e.Format != "" {
		msg += " (" + e.Format + ")"
	}
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap lets errors.Is match ErrImage, the kind, and the decoder's error.
func (e *ImageError) Unwrap() []error {
	out := []error{ErrImage, e.Kind}
	if e.Err != nil {
		out = append(out, e.Err)
	}
	return out
}

func imageErr(kind error, format string, err error, detail string, args ...any) *ImageError {
	return &ImageError{Kind: kind, Format: format, Detail: fmt.Sprintf(detail, args...), Err: err}
}
