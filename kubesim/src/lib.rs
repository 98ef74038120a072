//! kubesim: a Kubernetes API simulator with a faithful Deployment controller that the real
//! kubectl and kube-rs both drive.

pub mod cluster;
