"""timm backbones behind one interface: pooled features and a spatial feature map."""
