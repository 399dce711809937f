package server

import (
	"bytes"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestImageBytes: data URLs and fetched URLs, with every refusal naming the part.
func TestImageBytes(t *testing.T) {
	payload := []byte("\x89PNG fake bytes")
	slow := make(chan struct{})
	media := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok.png":
			_, _ = w.Write(payload)
		case "/big.png":
			_, _ = w.Write(bytes.Repeat([]byte{1}, 2048))
		case "/away":
			http.Redirect(w, r, "http://example.com/x.png", http.StatusFound)
		case "/slow":
			<-slow
		default:
			http.NotFound(w, r)
		}
	}))
	defer media.Close()
	defer close(slow) // before Close, which waits for the slow handler
	s := &Server{cfg: Config{MaxImageBytes: 1024, MediaFetchTimeout: 200 * time.Millisecond, AllowedMediaDomains: []string{"127.0.0.1"}}}
	b64 := base64.StdEncoding.EncodeToString(payload)
	for _, tc := range []struct {
		name, url string
		want      string // "" = payload returned
	}{
		{"data url", "data:image/png;base64," + b64, ""},
		{"data url, unpadded", "data:image/png;base64," + strings.TrimRight(b64, "="), ""},
		{"data url, no media type", "data:;base64," + b64, ""},
		{"data url, not base64", "data:image/png," + b64, "data:image/…;base64"},
		{"data url, text media type", "data:text/plain;base64," + b64, "not an image"},
		{"data url, corrupt base64", "data:image/png;base64,%%%%", "base64"},
		{"data url, over the limit", "data:image/png;base64," + base64.StdEncoding.EncodeToString(make([]byte, 2000)), "limit"},
		{"fetched", media.URL + "/ok.png", ""},
		{"fetched, over the limit", media.URL + "/big.png", "limit"},
		{"fetched, 404", media.URL + "/missing.png", "HTTP 404"},
		{"fetched, redirect to a disallowed host", media.URL + "/away", "allowed-media-domains"},
		{"fetched, too slow", media.URL + "/slow", "longer than"},
		{"disallowed host", "https://example.com/cat.png", "not allowed"},
		{"file url", "file:///etc/passwd", "http(s)"},
		{"no scheme", "cat.png", "http(s)"},
	} {
		data, e := s.imageBytes(chatImage{param: "messages[0].content[1]", url: tc.url})
		switch {
		case tc.want == "" && (e != nil || !bytes.Equal(data, payload)):
			t.Errorf("%s: %v, %q", tc.name, e, data)
		case tc.want != "" && (e == nil || e.Status != 400 || e.Param != "messages[0].content[1]" || !strings.Contains(e.Message, tc.want)):
			t.Errorf("%s: %+v, want a 400 naming the part and mentioning %q", tc.name, e, tc.want)
		}
	}
}
