//! The stage graph: edges run from an input's upstream stage to the stage that reads it. Gives a
//! stable topological order (manifest order among independent stages) or the path of a cycle.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use petgraph::graph::{DiGraph, NodeIndex};

/// Stage `i` reads from every stage in `upstream[i]` (indices into the same list).
pub struct Graph {
    upstream: Vec<Vec<usize>>,
    downstream: Vec<Vec<usize>>,
}

impl Graph {
    pub fn new(upstream: Vec<Vec<usize>>) -> Graph {
        let mut downstream = vec![Vec::new(); upstream.len()];
        for (i, ups) in upstream.iter().enumerate() {
            for &u in ups {
                if !downstream[u].contains(&i) {
                    downstream[u].push(i);
                }
            }
        }
        Graph {
            upstream,
            downstream,
        }
    }

    pub fn upstream(&self, i: usize) -> &[usize] {
        &self.upstream[i]
    }

    pub fn downstream(&self, i: usize) -> &[usize] {
        &self.downstream[i]
    }

    pub fn len(&self) -> usize {
        self.upstream.len()
    }

    pub fn is_empty(&self) -> bool {
        self.upstream.is_empty()
    }

    /// Kahn's algorithm taking the lowest index first, so independent stages keep manifest
    /// order. Err holds one cycle as a path of indices that starts and ends on the same stage.
    pub fn topo_order(&self) -> Result<Vec<usize>, Vec<usize>> {
        let n = self.len();
        let mut indegree: Vec<usize> = (0..n).map(|i| dedup_len(&self.upstream[i])).collect();
        let mut ready: BinaryHeap<Reverse<usize>> =
            (0..n).filter(|&i| indegree[i] == 0).map(Reverse).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(Reverse(i)) = ready.pop() {
            order.push(i);
            for &d in &self.downstream[i] {
                indegree[d] -= 1;
                if indegree[d] == 0 {
                    ready.push(Reverse(d));
                }
            }
        }
        if order.len() == n {
            Ok(order)
        } else {
            Err(self.find_cycle())
        }
    }

    /// One cycle, found with petgraph's strongly connected components.
    fn find_cycle(&self) -> Vec<usize> {
        let mut g: DiGraph<usize, ()> = DiGraph::new();
        let nodes: Vec<NodeIndex> = (0..self.len()).map(|i| g.add_node(i)).collect();
        for (i, ups) in self.upstream.iter().enumerate() {
            for &u in ups {
                g.add_edge(nodes[u], nodes[i], ());
            }
        }
        for scc in petgraph::algo::tarjan_scc(&g) {
            let members: Vec<usize> = scc.iter().map(|n| g[*n]).collect();
            let self_loop = members.len() == 1 && self.upstream[members[0]].contains(&members[0]);
            if members.len() < 2 && !self_loop {
                continue;
            }
            let start = *members.iter().min().expect("an SCC is never empty");
            if self_loop {
                return vec![start, start];
            }
            // Breadth-first from `start` inside the component back to `start`.
            let mut prev = vec![usize::MAX; self.len()];
            let mut queue = VecDeque::from([start]);
            while let Some(x) = queue.pop_front() {
                for &d in &self.downstream[x] {
                    if !members.contains(&d) {
                        continue;
                    }
                    if d == start {
                        // Walk back from `x` to `start` along the search tree.
                        let mut back = Vec::new();
                        let mut cur = x;
                        while cur != start {
                            back.push(cur);
                            cur = prev[cur];
                        }
                        let mut path = vec![start];
                        path.extend(back.into_iter().rev());
                        path.push(start);
                        return path;
                    }
                    if prev[d] == usize::MAX {
                        prev[d] = x;
                        queue.push_back(d);
                    }
                }
            }
        }
        Vec::new()
    }

    /// `targets` and everything they need, as a mask.
    pub fn ancestors_of(&self, targets: &[usize]) -> Vec<bool> {
        let mut keep = vec![false; self.len()];
        let mut stack: Vec<usize> = targets.to_vec();
        while let Some(i) = stack.pop() {
            if !keep[i] {
                keep[i] = true;
                stack.extend(self.upstream[i].iter().copied());
            }
        }
        keep
    }
}

fn dedup_len(v: &[usize]) -> usize {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.dedup();
    s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_topological_and_stable() {
        // 0 <- 2, 1 <- 2 means 2 reads 0 and 1; 3 is independent.
        let g = Graph::new(vec![vec![], vec![], vec![0, 1], vec![]]);
        assert_eq!(g.topo_order().unwrap(), vec![0, 1, 2, 3]);
        let g = Graph::new(vec![vec![1], vec![], vec![0, 0]]);
        assert_eq!(g.topo_order().unwrap(), vec![1, 0, 2]);
    }

    #[test]
    fn a_cycle_is_reported_as_a_path() {
        // 0 reads 2, 1 reads 0, 2 reads 1: 0 -> 1 -> 2 -> 0.
        let g = Graph::new(vec![vec![2], vec![0], vec![1], vec![]]);
        assert_eq!(g.topo_order().unwrap_err(), vec![0, 1, 2, 0]);
        let g = Graph::new(vec![vec![0]]);
        assert_eq!(g.topo_order().unwrap_err(), vec![0, 0]);
    }

    #[test]
    fn ancestors_include_targets() {
        let g = Graph::new(vec![vec![], vec![0], vec![1], vec![]]);
        assert_eq!(g.ancestors_of(&[1]), vec![true, true, false, false]);
    }
}
