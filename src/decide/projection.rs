//! The `Projection` trait, tuples of projections, and the type-erased view of a
//! projection the cache, snapshots and model building work with.
//!
//! A tuple is a projection like any other for a caller, but the store never caches or
//! snapshots a tuple: it takes the tuple apart into its members (leaves), keeps each
//! member's state under the member's own key, and reads once for all of them. So
//! `(CourseCapacity("c1"), StudentCourses("s1"))` and `(CourseCapacity("c1"),
//! StudentCourses("s2"))` share the course's entry.

use std::any::{Any, TypeId};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{Query, QueryItem, SequencedEvent};

/// A fold of the events matching a query into a state: what one decision needs to
/// know about its consistency boundary.
///
/// The store builds a projection's state incrementally: from its in-memory cache or
/// a snapshot, then only the events after them. For that to be exact, `apply` must
/// depend on nothing but the state and the event, and [`Projection::name`] with
/// [`Projection::version`] must identify the code: two projections with the same name
/// and version and equal queries are taken to compute the same state.
///
/// ```
/// use dcb_store::{Projection, Query, QueryItem, SequencedEvent};
///
/// /// Seats taken in one course.
/// struct SeatsTaken { course: String }
///
/// impl Projection for SeatsTaken {
///     type State = u32;
///     fn name(&self) -> &'static str { "seats-taken" }
///     fn query(&self) -> Query {
///         Query::new([QueryItem::new().types(["StudentSubscribed"]).tags([format!("course:{}", self.course)])])
///     }
///     fn initial(&self) -> u32 { 0 }
///     fn apply(&self, seats: &mut u32, _event: &SequencedEvent) { *seats += 1 }
/// }
/// ```
pub trait Projection: Send + Sync + 'static {
    /// The folded state. Snapshots store it as JSON.
    type State: Clone + Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Names the projection's code (unique among the projections of one store).
    fn name(&self) -> &'static str;

    /// Bump it when `apply` or `initial` changes meaning: cached states and snapshots
    /// of other versions are then ignored and rebuilt.
    fn version(&self) -> u32 {
        1
    }

    /// The events it folds; the projection's parameters live here (a course's tag).
    fn query(&self) -> Query;

    /// The state before any event.
    fn initial(&self) -> Self::State;

    /// Folds one event (matching [`Projection::query`]) into the state.
    fn apply(&self, state: &mut Self::State, event: &SequencedEvent);

    /// Not part of the API (tuples override it): the leaves this projection is made of.
    #[doc(hidden)]
    fn __members<'a>(&'a self, members: &mut Members<'a>)
    where
        Self: Sized,
    {
        members.leaves.push(self);
    }

    /// Not part of the API (tuples override it): the state from its leaves' states, in
    /// the order of [`Projection::__members`].
    #[doc(hidden)]
    fn __assemble(&self, states: &mut States) -> Self::State
    where
        Self: Sized,
    {
        states.take::<Self::State>()
    }

    /// Not part of the API (tuples override it): each leaf's state as JSON.
    #[doc(hidden)]
    fn __serialize(&self, state: &Self::State, out: &mut Vec<serde_json::Result<String>>)
    where
        Self: Sized,
    {
        out.push(serde_json::to_string(state));
    }
}

/// The leaves of a projection (hidden: only the trait's provided methods use it).
#[doc(hidden)]
pub struct Members<'a> {
    pub(crate) leaves: Vec<&'a dyn Leaf>,
}

impl<'a> Members<'a> {
    pub(crate) fn of<P: Projection>(projection: &'a P) -> Vec<&'a dyn Leaf> {
        let mut members = Members { leaves: Vec::new() };
        projection.__members(&mut members);
        members.leaves
    }
}

/// States handed back to a projection, one per leaf (hidden: see [`Members`]).
#[doc(hidden)]
pub struct States {
    pub(crate) states: std::vec::IntoIter<AnyState>,
}

impl States {
    fn take<S: 'static>(&mut self) -> S {
        let state = self
            .states
            .next()
            .expect("one state per leaf, in the order of the leaves");
        *state
            .downcast::<S>()
            .expect("a leaf's state is built by that leaf")
    }
}

/// A state whose type only its projection knows.
pub(crate) type AnyState = Box<dyn Any + Send + Sync>;

/// Serialises a state whose type is known to the function (kept by the snapshot saver).
pub(crate) type Serializer = fn(&(dyn Any + Send + Sync)) -> Option<serde_json::Result<String>>;

/// One projection with its state type erased: what the cache and snapshots handle.
pub(crate) trait Leaf: Send + Sync {
    fn name(&self) -> &'static str;
    fn version(&self) -> u32;
    fn query(&self) -> Query;
    /// Tells states of different projection types apart in the in-memory cache.
    fn projection_type(&self) -> TypeId;
    fn initial(&self) -> AnyState;
    fn apply(&self, state: &mut AnyState, event: &SequencedEvent);
    /// A copy of `state`, `None` when it is not this projection's state type.
    fn clone_state(&self, state: &(dyn Any + Send + Sync)) -> Option<AnyState>;
    fn serializer(&self) -> Serializer;
    fn deserialize(&self, json: &str) -> Option<AnyState>;
}

impl<P: Projection> Leaf for P {
    fn name(&self) -> &'static str {
        Projection::name(self)
    }

    fn version(&self) -> u32 {
        Projection::version(self)
    }

    fn query(&self) -> Query {
        Projection::query(self)
    }

    fn projection_type(&self) -> TypeId {
        TypeId::of::<P>()
    }

    fn initial(&self) -> AnyState {
        Box::new(Projection::initial(self))
    }

    fn apply(&self, state: &mut AnyState, event: &SequencedEvent) {
        if let Some(state) = state.downcast_mut::<P::State>() {
            Projection::apply(self, state, event);
        }
    }

    fn clone_state(&self, state: &(dyn Any + Send + Sync)) -> Option<AnyState> {
        let state = state.downcast_ref::<P::State>()?;
        Some(Box::new(state.clone()))
    }

    fn serializer(&self) -> Serializer {
        |state| state.downcast_ref::<P::State>().map(serde_json::to_string)
    }

    fn deserialize(&self, json: &str) -> Option<AnyState> {
        let state: P::State = serde_json::from_str(json).ok()?;
        Some(Box::new(state))
    }
}

/// The union of queries: an event matches it when it matches any of them. Items that
/// appear in several members are kept once.
pub(crate) fn union(queries: impl IntoIterator<Item = Query>) -> Query {
    let mut items: Vec<QueryItem> = Vec::new();
    for query in queries {
        for item in query.items() {
            if !items.contains(item) {
                items.push(item.clone());
            }
        }
    }
    Query::new(items)
}

macro_rules! tuple_projection {
    ($($p:ident . $i:tt),+) => {
        /// A tuple of projections is a projection: its state is the tuple of the
        /// members' states, its query the union of theirs, and each event is applied
        /// only to the members whose query it matches.
        impl<$($p: Projection),+> Projection for ($($p,)+) {
            type State = ($($p::State,)+);

            fn name(&self) -> &'static str {
                "tuple"
            }

            fn query(&self) -> Query {
                union([$(self.$i.query()),+])
            }

            fn initial(&self) -> Self::State {
                ($(self.$i.initial(),)+)
            }

            fn apply(&self, state: &mut Self::State, event: &SequencedEvent) {
                $(
                    if self.$i.query().matches(&event.event) {
                        self.$i.apply(&mut state.$i, event);
                    }
                )+
            }

            fn __members<'a>(&'a self, members: &mut Members<'a>) {
                $(self.$i.__members(members);)+
            }

            fn __assemble(&self, states: &mut States) -> Self::State {
                ($(self.$i.__assemble(states),)+)
            }

            fn __serialize(&self, state: &Self::State, out: &mut Vec<serde_json::Result<String>>) {
                $(self.$i.__serialize(&state.$i, out);)+
            }
        }
    };
}

tuple_projection!(P1.0, P2.1);
tuple_projection!(P1.0, P2.1, P3.2);
