"""wisp CNI: the chained plugin (`cni.plugin`) and the node agent that enrols pods (`cni.agent`)."""
