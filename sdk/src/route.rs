//! Per-route rule tables keyed by the `xds.route_name` property.
//!
//! Tollgate (and Envoy) expose the name of the route a request matched as the property
//! `xds.route_name`. A plugin that keeps a table `route name → rules` plus a default scopes
//! itself per route with a single plugin instance, which is how the same module and
//! configuration work in Envoy, where per-route plugin configuration does not exist.
//!
//! ```
//! use std::collections::BTreeMap;
//! use tollgate_sdk::route::RouteRules;
//! let rules = RouteRules::new(10, BTreeMap::from([("search".to_string(), 2)]));
//! assert_eq!(*rules.get(Some("search")), 2);
//! assert_eq!(*rules.get(Some("orders")), 10);
//! assert_eq!(*rules.get(None), 10);
//! ```

use std::collections::BTreeMap;

/// The name of the route the current request matched (`xds.route_name`).
pub fn current_route_name() -> Option<String> {
    crate::property_string(&["xds", "route_name"]).filter(|name| !name.is_empty())
}

/// A default value and per-route overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteRules<T> {
    default: T,
    routes: BTreeMap<String, T>,
}

impl<T> RouteRules<T> {
    pub fn new(default: T, routes: BTreeMap<String, T>) -> Self {
        Self { default, routes }
    }

    /// The rules for `route` (its override, else the default).
    pub fn get(&self, route: Option<&str>) -> &T {
        route
            .and_then(|route| self.routes.get(route))
            .unwrap_or(&self.default)
    }

    /// The rules for the route of the current request.
    pub fn for_current_route(&self) -> &T {
        if self.routes.is_empty() {
            return &self.default;
        }
        self.get(current_route_name().as_deref())
    }

    pub fn default_rules(&self) -> &T {
        &self.default
    }

    pub fn routes(&self) -> impl Iterator<Item = (&str, &T)> {
        self.routes
            .iter()
            .map(|(name, rules)| (name.as_str(), rules))
    }

    /// Transforms every entry (e.g. raw config → validated rules), stopping at the first
    /// error; `f` gets the route name (`None` for the default).
    pub fn try_map<U, E>(
        self,
        mut f: impl FnMut(Option<&str>, T) -> Result<U, E>,
    ) -> Result<RouteRules<U>, E> {
        let default = f(None, self.default)?;
        let mut routes = BTreeMap::new();
        for (name, rules) in self.routes {
            let mapped = f(Some(&name), rules)?;
            routes.insert(name, mapped);
        }
        Ok(RouteRules { default, routes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_and_map_keeps_names() {
        let rules = RouteRules::new("d", BTreeMap::from([("a".to_string(), "x")]));
        assert_eq!(*rules.get(Some("a")), "x");
        assert_eq!(*rules.get(Some("b")), "d");
        let mapped = rules
            .try_map(|route, value| -> Result<String, ()> {
                Ok(format!("{}:{value}", route.unwrap_or("-")))
            })
            .unwrap();
        assert_eq!(mapped.get(Some("a")), "a:x");
        assert_eq!(mapped.default_rules(), "-:d");
        let failed =
            RouteRules::new(1, BTreeMap::from([("bad".to_string(), 0)])).try_map(|route, v| {
                if v == 0 {
                    Err(route.map(str::to_owned))
                } else {
                    Ok(v)
                }
            });
        assert_eq!(failed.unwrap_err(), Some("bad".to_string()));
    }
}
