"""The torch half of each SAE architecture, one module per architecture named like it (its
`Architecture` subclass: training rule, inference rule, export); `registry` finds the class of
an `arch` name. Each module's torch-free half, its spec, is thresher/config/archs/<arch>.py."""
