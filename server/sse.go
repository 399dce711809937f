package server

import (
	"bytes"
	"encoding/json"
	"net/http"

	"github.com/gin-gonic/gin"
)

// sseWriter writes server-sent events ("data: {json}\n\n") into a buffer that flush sends;
// the stream handlers flush only when no further event is ready, so a busy stream sends
// several chunks per write.
type sseWriter struct {
	w   gin.ResponseWriter
	buf bytes.Buffer
	enc *json.Encoder
	err error // first write error (the client is gone); later writes are skipped
	// onFail is called once, on the first failed write: the request is aborted then, as
	// a gRPC stream's is, instead of generating for nobody.
	onFail func()
	// scratch is reused by the hand-encoded chunks (jsonfast.go).
	scratch []byte
}

func startSSE(c *gin.Context, onFail func()) *sseWriter {
	h := c.Writer.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("Connection", "keep-alive")
	h.Set("X-Accel-Buffering", "no")
	c.Writer.WriteHeader(http.StatusOK)
	w := &sseWriter{w: c.Writer, onFail: onFail}
	w.enc = json.NewEncoder(&w.buf)
	w.enc.SetEscapeHTML(false)
	return w
}

func (w *sseWriter) data(v any) {
	if w.err != nil {
		return
	}
	w.buf.WriteString("data: ")
	if err := w.enc.Encode(v); err != nil { // Encode ends the line with '\n'
		w.err = err
		return
	}
	w.buf.WriteByte('\n')
}

// event writes a named event ("event: name" then its data), as the Responses API streams.
func (w *sseWriter) event(name string, v any) {
	if w.err != nil {
		return
	}
	w.buf.WriteString("event: ")
	w.buf.WriteString(name)
	w.buf.WriteByte('\n')
	w.data(v)
}

// raw writes an event whose JSON the caller encoded.
func (w *sseWriter) raw(js []byte) {
	if w.err != nil {
		return
	}
	w.buf.WriteString("data: ")
	w.buf.Write(js)
	w.buf.WriteString("\n\n")
}

func (w *sseWriter) done() {
	if w.err == nil {
		w.buf.WriteString("data: [DONE]\n\n")
	}
}

func (w *sseWriter) flush() {
	if w.err != nil || w.buf.Len() == 0 {
		w.buf.Reset()
		return
	}
	if _, err := w.w.Write(w.buf.Bytes()); err != nil {
		w.err = err
		if w.onFail != nil {
			w.onFail()
		}
	} else {
		w.w.Flush()
	}
	w.buf.Reset()
}
