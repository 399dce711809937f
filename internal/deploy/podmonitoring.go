package deploy

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// PodMonitoringAPIVersion is the API version of Google Cloud Managed Service for
// Prometheus' PodMonitoring custom resource.
const PodMonitoringAPIVersion = "monitoring.googleapis.com/v1"

// PodMonitoring is the subset of GKE Managed Prometheus' PodMonitoring custom resource that
// the manifests use: which pods to scrape, and on which port and path. Only fields of the
// CRD's schema are declared, so a strict decode of a rendered document into this type fails
// on anything else.
type PodMonitoring struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              PodMonitoringSpec `json:"spec"`
}

// PodMonitoringSpec selects the pods and endpoints to scrape.
type PodMonitoringSpec struct {
	Selector     metav1.LabelSelector `json:"selector"`
	Endpoints    []ScrapeEndpoint     `json:"endpoints"`
	TargetLabels *TargetLabels        `json:"targetLabels,omitempty"`
}

// ScrapeEndpoint is one scraped port of each selected pod.
type ScrapeEndpoint struct {
	// Port is the container port's name or number.
	Port intstr.IntOrString `json:"port"`
	// Path of the metrics endpoint (default /metrics).
	Path string `json:"path,omitempty"`
	// Interval and Timeout are Prometheus durations such as "15s".
	Interval string `json:"interval,omitempty"`
	Timeout  string `json:"timeout,omitempty"`
}

// TargetLabels says which pod metadata become labels of the scraped series.
type TargetLabels struct {
	Metadata []string `json:"metadata,omitempty"`
}
