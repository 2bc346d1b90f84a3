//! The Vision Transformer as timm builds it, by timm's names: `patch_embed.proj`, `cls_token`,
//! `pos_embed`, `blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`, `head`.
//! A timm `vit_*` state dict (class token, no register tokens, no layer scale, `global_pool='token'`)
//! loads by name.

use crate::arch::Arch;
use crate::graph::{Act, Builder};

/// timm's `partial(nn.LayerNorm, eps=1e-6)`.
const LN_EPS: f64 = 1e-6;

pub(crate) fn build(arch: &Arch, b: &mut Builder) {
    let Arch::Vit {
        image_size,
        patch,
        in_channels,
        dim,
        depth,
        heads,
        mlp_dim,
        num_classes,
    } = *arch
    else {
        unreachable!("a ViT")
    };
    let x = b.input(in_channels);
    let x = b.conv_with_bias(x, "patch_embed.proj", dim, patch, patch);
    let x = b.tokens(x);
    let x = b.class_token(x, "cls_token");
    let side = image_size / patch;
    let mut x = b.pos_embed(x, "pos_embed", side * side + 1);
    for i in 0..depth {
        let p = format!("blocks.{i}");
        let h = b.layer_norm(x, &format!("{p}.norm1"), LN_EPS);
        let h = b.attention(h, &format!("{p}.attn"), heads);
        x = b.add(x, h);
        let h = b.layer_norm(x, &format!("{p}.norm2"), LN_EPS);
        let h = b.linear(h, &format!("{p}.mlp.fc1"), mlp_dim);
        let h = b.act(h, Act::Gelu);
        let h = b.linear(h, &format!("{p}.mlp.fc2"), dim);
        x = b.add(x, h);
    }
    let x = b.layer_norm(x, "norm", LN_EPS);
    let x = b.class_pool(x);
    b.linear(x, "head", num_classes);
}
