"""gatequeue: queue and watch GPU training runs of differentiable logic gate networks."""
