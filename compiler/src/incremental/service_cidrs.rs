//! The ranges cluster IPs are allocated from: `--service-cidr` and the cluster's ServiceCIDR
//! objects (KEP-1880). New connections to an address in them that no Service owns are
//! dropped. A change rewrites only the service-CIDR sets' elements, in the next flush's
//! transaction.

use super::flush::Change;
use super::Incremental;
use crate::layout;
use ipnet::IpNet;
use std::collections::BTreeMap;

#[derive(Default)]
pub(super) struct ServiceCidrs {
    /// `--service-cidr`.
    flag: Vec<IpNet>,
    /// The ServiceCIDR objects' ranges, by object name.
    objects: BTreeMap<String, Vec<IpNet>>,
    /// The sets differ from what the table holds: the next flush rewrites them.
    pub(super) changed: bool,
}

impl ServiceCidrs {
    pub(super) fn new(flag: &[IpNet]) -> ServiceCidrs {
        ServiceCidrs {
            flag: flag.to_vec(),
            ..ServiceCidrs::default()
        }
    }

    /// Every range, merged: the kernel refuses overlapping intervals in one set, and two
    /// ServiceCIDRs (or one and the flag) may well overlap.
    fn all(&self) -> Vec<IpNet> {
        let every: Vec<IpNet> = self
            .flag
            .iter()
            .chain(self.objects.values().flatten())
            .copied()
            .collect();
        IpNet::aggregate(&every)
    }
}

impl Incremental {
    /// The flag's ranges changed (a new `--service-cidr`); `node` holds them.
    pub(super) fn set_service_cidr_flag(&mut self, flag: &[IpNet]) -> Vec<IpNet> {
        self.service_cidrs.flag = flag.to_vec();
        self.service_cidrs.all()
    }

    /// Set (`Some`) or delete a ServiceCIDR object's ranges; whether the table changes.
    pub(super) fn set_service_cidr(&mut self, name: &str, nets: Option<Vec<IpNet>>) -> bool {
        match nets {
            Some(nets) => self.service_cidrs.objects.insert(name.into(), nets),
            None => self.service_cidrs.objects.remove(name),
        };
        let all = self.service_cidrs.all();
        if all == self.node.service_cidrs {
            return false;
        }
        self.node.service_cidrs = all;
        self.service_cidrs.changed = true;
        true
    }

    /// Move the service-CIDR sets to the ranges now in force, in `change` and the shape.
    pub(super) fn service_cidr_changes(&mut self, change: &mut Change) {
        if !std::mem::take(&mut self.service_cidrs.changed) {
            return;
        }
        for (name, set) in layout::service_cidr_sets(&self.node.service_cidrs) {
            let held = self.shape.sets.insert(name.clone(), set.clone());
            let held = held.expect("every table declares its service-CIDR sets");
            for (table, elements) in [
                (&mut change.gone, held.elements),
                (&mut change.arrived, set.elements),
            ] {
                table.sets.get_mut(&name).expect("declared").elements = elements;
            }
        }
    }
}
