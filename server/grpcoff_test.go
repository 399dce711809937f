package server

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestServeWithGRPCOff: with a negative GRPCPort the server serves HTTP until its context
// ends (gRPC being off must not read as the gRPC server having stopped).
func TestServeWithGRPCOff(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.HTTPListener, cfg.GRPCPort = ln, -1
	cfg.ServedModelNames, cfg.MaxModelLen = []string{"m"}, 64
	s, err := New(cfg, &fakeEngine{}, fakeTokenizer{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	<-s.Ready()
	select {
	case err := <-done:
		t.Fatalf("Serve returned while its context was live: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	resp, err := http.Get("http://" + s.HTTPAddr().String() + "/health")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/health: %v %v", resp, err)
	}
	resp.Body.Close()
	if s.GRPCAddr() != nil {
		t.Errorf("gRPC listening at %v with GRPCPort -1", s.GRPCAddr())
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}
