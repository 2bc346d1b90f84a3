//! Recognising a checkpoint's architecture from its tensor names and shapes, for importing
//! foreign checkpoints (`cema import`): the family from the names, its parameters from a few
//! shapes, and the candidate confirmed only when every tensor of its graph is present with the
//! same shape and no other tensor is.

use std::collections::BTreeMap;

use crate::tensors::{is_ignored_key, NamedTensors};
use crate::{cpu, Arch, Net};

fn shape<'a>(t: &'a NamedTensors, name: &str) -> Option<&'a [usize]> {
    t.get(name).map(|t| t.shape.as_slice())
}

/// The architectures `tensors` could be, from names and a few shapes (not yet confirmed).
fn candidates(t: &NamedTensors) -> Vec<Arch> {
    let has = |prefix: &str| t.keys().any(|k| k.starts_with(prefix));
    if let (Some(fc), true) = (shape(t, "_fc.weight"), has("_conv_stem.")) {
        return (0..=4).map(|v| Arch::efficientnet_lite(v, fc[0])).collect();
    }
    let (Some(fc), Some(conv1)) = (shape(t, "fc.weight"), shape(t, "conv1.weight")) else {
        return Vec::new();
    };
    let (classes, width, in_channels) = (fc[0], conv1[0], conv1.get(1).copied().unwrap_or(0));
    if has("layer4.") {
        return [18, 34, 50]
            .map(|depth| Arch::TorchvisionResnet {
                depth,
                in_channels,
                num_classes: classes,
            })
            .to_vec();
    }
    // CIFAR ResNet: n blocks per stage, depth 6n + 2.
    let blocks = t
        .keys()
        .filter_map(|k| k.strip_prefix("layer1."))
        .filter_map(|k| k.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |b| b + 1);
    vec![Arch::CifarResnet {
        depth: 6 * blocks + 2,
        width,
        in_channels,
        num_classes: classes,
    }]
}

/// The first difference between `tensors` and `arch`'s own tensors, if any.
fn difference(arch: &Arch, t: &NamedTensors) -> Option<String> {
    let net = match Net::new(arch, &cpu(), 0) {
        Ok(net) => net,
        Err(e) => return Some(e),
    };
    let s = net.store();
    let want: BTreeMap<&str, &[usize]> = (0..s.len()).map(|i| (s.name(i), s.shape(i))).collect();
    for (name, expected) in &want {
        match t.get(*name) {
            None => return Some(format!("no tensor `{name}` (shape {expected:?})")),
            Some(h) if h.shape != *expected => {
                return Some(format!(
                    "tensor `{name}` is {:?}, the architecture's is {expected:?}",
                    h.shape
                ))
            }
            Some(_) => {}
        }
    }
    t.keys()
        .find(|k| !want.contains_key(k.as_str()) && !is_ignored_key(k))
        .map(|k| format!("tensor `{k}` is not part of the architecture"))
}

/// The architecture whose tensors are exactly `tensors`' (by name and shape), or why none is:
/// the family is told by the names (`fc`/`conv1` with or without `layer4` for ResNets,
/// `_conv_stem`/`_fc` for EfficientNet-Lite), the rest is checked tensor by tensor.
pub fn infer_arch(tensors: &NamedTensors) -> Result<Arch, String> {
    if tensors.contains_key("patch_embed.proj.weight") && tensors.contains_key("pos_embed") {
        // Every shape of a ViT is the same whatever its number of heads: guessing it would make
        // a model that loads and computes something else.
        return Err(
            "a ViT (timm names): its number of attention heads is not in the weights, so \
             its architecture cannot be inferred (family \"vit\" in docs/model-card.md)"
                .into(),
        );
    }
    let candidates = candidates(tensors);
    if candidates.is_empty() {
        return Err(
            "no known architecture family in its tensor names (CIFAR ResNet: conv1, layer1-3, \
             fc; torchvision ResNet: conv1, layer1-4, fc; EfficientNet-Lite: _conv_stem, _fc)"
                .into(),
        );
    }
    let mut why = Vec::new();
    for arch in &candidates {
        match difference(arch, tensors) {
            None => return Ok(arch.clone()),
            Some(d) => why.push(format!(
                "{}: {d}",
                serde_json::to_string(arch).unwrap_or_default()
            )),
        }
    }
    Err(format!("no candidate matches: {}", why.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Model, ModelCard};

    fn state_dict(arch: Arch) -> NamedTensors {
        let input = crate::InputSpec {
            height: 32,
            width: 32,
            channels: arch.in_channels(),
            mean: vec![0.5; arch.in_channels()],
            std: vec![0.5; arch.in_channels()],
        };
        let card = ModelCard::new("m", "edge", arch, input, vec![], "test");
        Model::init(card, &cpu(), 0).unwrap().state_dict()
    }

    #[test]
    fn every_family_is_recognised_from_its_own_state_dict() {
        for arch in [
            Arch::resnet8(1, 10),
            Arch::CifarResnet {
                depth: 20,
                width: 32,
                in_channels: 3,
                num_classes: 100,
            },
            Arch::resnet18(7),
            Arch::TorchvisionResnet {
                depth: 34,
                in_channels: 3,
                num_classes: 5,
            },
            Arch::resnet50(3),
            Arch::efficientnet_lite(0, 10),
            Arch::efficientnet_lite(2, 4),
        ] {
            assert_eq!(infer_arch(&state_dict(arch.clone())), Ok(arch));
        }
    }

    #[test]
    fn a_damaged_state_dict_is_refused_naming_the_tensor() {
        let mut t = state_dict(Arch::resnet8(1, 10));
        t.remove("layer2.0.bn1.running_var");
        let e = infer_arch(&t).unwrap_err();
        assert!(e.contains("layer2.0.bn1.running_var"), "{e}");
        let mut t = state_dict(Arch::resnet8(1, 10));
        let extra = t["fc.bias"].clone();
        t.insert("head.extra".into(), extra);
        assert!(infer_arch(&t).unwrap_err().contains("head.extra"));
        assert!(infer_arch(&NamedTensors::new()).is_err());
    }

    #[test]
    fn a_vit_is_refused_because_its_heads_are_not_in_the_weights() {
        let vit = Arch::Vit {
            image_size: 32,
            patch: 8,
            in_channels: 3,
            dim: 64,
            depth: 2,
            heads: 2,
            mlp_dim: 128,
            num_classes: 10,
        };
        let e = infer_arch(&state_dict(vit)).unwrap_err();
        assert!(e.contains("heads") && e.contains("vit"), "{e}");
    }
}
