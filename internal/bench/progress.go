package bench

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// progress is a tqdm-like bar: "\r 37/100 |█████     | 37% [00:05<00:08, 7.10 req/s]".
// It redraws at most ten times a second; a nil writer disables it.
type progress struct {
	mu      sync.Mutex
	w       io.Writer
	total   int
	done    int
	start   time.Time
	lastOut time.Time
}

func newProgress(w io.Writer, total int) *progress {
	p := &progress{w: w, total: total, start: time.Now()}
	if w != nil {
		p.draw()
	}
	return p
}

func (p *progress) add() {
	if p.w == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done++
	if time.Since(p.lastOut) >= 100*time.Millisecond || p.done == p.total {
		p.draw()
	}
}

func (p *progress) finish() {
	if p.w == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.draw()
	fmt.Fprintln(p.w)
}

func clock(d time.Duration) string {
	s := int(d.Round(time.Second).Seconds())
	return fmt.Sprintf("%02d:%02d", s/60, s%60)
}

// draw must be called with mu held.
func (p *progress) draw() {
	p.lastOut = time.Now()
	const width = 30
	frac := 0.0
	if p.total > 0 {
		frac = float64(p.done) / float64(p.total)
	}
	filled := int(frac * width)
	elapsed := time.Since(p.start)
	rate := 0.0
	if s := elapsed.Seconds(); s > 0 {
		rate = float64(p.done) / s
	}
	eta := "?"
	if rate > 0 {
		eta = clock(time.Duration(float64(p.total-p.done) / rate * float64(time.Second)))
	}
	fmt.Fprintf(p.w, "\r%4d/%d |%s%s| %3.0f%% [%s<%s, %.2f req/s]",
		p.done, p.total, strings.Repeat("█", filled), strings.Repeat(" ", width-filled),
		frac*100, clock(elapsed), eta, rate)
}
