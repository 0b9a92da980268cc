"""DataSource / DataSink: the 1.x dispatch API, provides/accepts, composites, error classes."""

from __future__ import annotations

import pickle
from copy import deepcopy
from typing import Any

import pytest

from datapipelines import (
    TYPE_WILDCARD,
    CompositeDataSink,
    CompositeDataSource,
    DataSink,
    DataSource,
    NoConversionError,
    NotFoundError,
    UnsupportedError,
)


class User:
    def __init__(self, name: str) -> None:
        self.name = name


class Admin(User):
    pass


class Team:
    pass


class Users(DataSource):
    """A typed 1.x-style source: User by name, lists of users by prefix."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.calls: list[tuple[str, Any, Any]] = []

    @DataSource.dispatch
    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        pass

    @DataSource.dispatch
    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        pass

    @get.register(User)
    def get_user(self, query: Any, context: Any = None) -> User:
        self.calls.append(("get", query, context))
        if query["name"] not in self.names:
            raise NotFoundError(f"no user {query['name']}")
        return User(query["name"])

    @get_many.register(User)
    def get_users(self, query: Any, context: Any = None) -> list[User]:
        self.calls.append(("get_many", query, context))
        return [User(n) for n in self.names if n.startswith(query["prefix"])]

    @get_many.register(Team)
    def get_teams(self, query: Any, context: Any = None) -> list[Team]:
        return [Team()]


class Anything(DataSource):
    """A wildcard source: no handlers, so its method bodies answer every type."""

    @DataSource.dispatch
    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        return (type, dict(query))

    @DataSource.dispatch
    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        return [(type, dict(query))]


class UserSink(DataSink):
    def __init__(self) -> None:
        self.items: list[tuple[str, Any, Any]] = []

    @DataSink.dispatch
    def put(self, type: Any, item: Any, context: Any = None) -> None:
        pass

    @DataSink.dispatch
    def put_many(self, type: Any, items: Any, context: Any = None) -> None:
        pass

    @put.register(User)
    def put_user(self, item: User, context: Any = None) -> None:
        self.items.append(("put", item, context))

    @put_many.register(User)
    def put_users(self, items: Any, context: Any = None) -> None:
        self.items.append(("put_many", list(items), context))


class EverythingSink(DataSink):
    def __init__(self) -> None:
        self.items: list[tuple[Any, Any]] = []

    @DataSink.dispatch
    def put(self, type: Any, item: Any, context: Any = None) -> None:
        self.items.append((type, item))

    @DataSink.dispatch
    def put_many(self, type: Any, items: Any, context: Any = None) -> None:
        self.items.extend((type, item) for item in items)


# -- provides / accepts ---------------------------------------------------------


def test_provides_is_the_set_of_types_registered_on_get_and_get_many() -> None:
    provides = Users([]).provides
    assert provides == {User, Team}
    assert provides is not TYPE_WILDCARD
    assert TYPE_WILDCARD not in provides


def test_a_source_without_handlers_provides_the_wildcard_both_ways() -> None:
    provides = Anything().provides
    assert provides is TYPE_WILDCARD
    assert TYPE_WILDCARD in provides
    assert User in provides and "any name" in provides


def test_accepts_is_the_set_of_registered_types_or_the_wildcard() -> None:
    assert UserSink().accepts == {User}
    accepts = EverythingSink().accepts
    assert accepts is TYPE_WILDCARD
    assert TYPE_WILDCARD in accepts and Team in accepts


def test_type_wildcard_is_one_object_through_pickle_and_deepcopy() -> None:
    assert pickle.loads(pickle.dumps(TYPE_WILDCARD)) is TYPE_WILDCARD
    assert deepcopy(TYPE_WILDCARD) is TYPE_WILDCARD
    assert type(TYPE_WILDCARD)() is TYPE_WILDCARD


# -- dispatch -------------------------------------------------------------------


def test_handlers_get_self_query_and_context() -> None:
    source = Users(["ann"])
    context = {"marker": 1}
    user = source.get(User, {"name": "ann"}, context)
    assert isinstance(user, User) and user.name == "ann"
    assert source.calls == [("get", {"name": "ann"}, context)]
    assert source.get(User, {"name": "ann"}).name == "ann"
    assert source.calls[-1][2] is None
    assert [u.name for u in source.get_many(User, {"prefix": "a"})] == ["ann"]


def test_a_handler_says_not_here_with_not_found_error() -> None:
    with pytest.raises(NotFoundError, match="no user bob"):
        Users(["ann"]).get(User, {"name": "bob"})


def test_a_subclass_of_a_registered_type_uses_the_base_handler() -> None:
    assert Users(["ann"]).get(Admin, {"name": "ann"}).name == "ann"


def test_an_unregistered_type_raises_unsupported_error_naming_it() -> None:
    source = Users([])
    with pytest.raises(UnsupportedError, match="str"):
        source.get(str, {})
    with pytest.raises(UnsupportedError, match="str"):
        source.get_many(str, {})
    with pytest.raises(UnsupportedError, match="Team"):
        UserSink().put(Team, Team())


def test_a_type_registered_only_on_get_many_is_unsupported_by_get() -> None:
    """The source provides Team through get_many only; get(Team) must not run the empty body."""

    class ManyOnly(DataSource):
        @DataSource.dispatch
        def get(self, type: Any, query: Any, context: Any = None) -> Any:
            pass

        @DataSource.dispatch
        def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
            pass

        @get_many.register(Team)
        def get_teams(self, query: Any, context: Any = None) -> list[Team]:
            return [Team()]

    assert ManyOnly().provides == {Team}
    with pytest.raises(UnsupportedError, match="Team"):
        ManyOnly().get(Team, {})
    with pytest.raises(UnsupportedError, match="Team"):
        Users([]).get(Team, {})


def test_a_type_registered_only_on_put_is_unsupported_by_put_many() -> None:
    class PutOnly(DataSink):
        @DataSink.dispatch
        def put(self, type: Any, item: Any, context: Any = None) -> None:
            pass

        @DataSink.dispatch
        def put_many(self, type: Any, items: Any, context: Any = None) -> None:
            pass

        @put.register(User)
        def put_user(self, item: Any, context: Any = None) -> None:
            pass

    assert PutOnly().accepts == {User}
    with pytest.raises(UnsupportedError, match="User"):
        PutOnly().put_many(User, [User("a")])


def test_a_wildcard_source_body_receives_the_type() -> None:
    assert Anything().get(Team, {"q": 1}) == (Team, {"q": 1})
    assert Anything().get_many(User, {"q": 2}) == [(User, {"q": 2})]


def test_sink_dispatch_passes_item_and_context() -> None:
    sink = UserSink()
    ann = User("ann")
    sink.put(User, ann, {"c": 1})
    sink.put_many(User, iter([ann]))
    assert sink.items == [("put", ann, {"c": 1}), ("put_many", [ann], None)]


def test_unsupported_helpers_build_unsupported_errors() -> None:
    error = DataSource.unsupported(Team)
    assert isinstance(error, UnsupportedError) and "Team" in str(error)
    error = DataSink.unsupported(Team)
    assert isinstance(error, UnsupportedError) and "Team" in str(error)


def test_error_classes_keep_their_1x_bases() -> None:
    # In 1.x all three are ValueErrors; code written for 1.x catches them as such.
    assert issubclass(NoConversionError, ValueError)
    assert issubclass(NotFoundError, ValueError)
    assert issubclass(UnsupportedError, ValueError)
    with pytest.raises(ValueError):
        Users([]).get(User, {"name": "nobody"})


# -- composites -----------------------------------------------------------------


class Named(DataSource):
    """A source that answers ``type`` with its own name, or says not found."""

    def __init__(self, name: str, types: Any, found: bool = True) -> None:
        self.name, self.types, self.found = name, types, found
        self.asked = 0

    def __repr__(self) -> str:
        return f"Named({self.name})"

    @property
    def provides(self) -> Any:
        return self.types

    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        self.asked += 1
        if not self.found:
            raise NotFoundError()
        return self.name

    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        self.asked += 1
        if not self.found:
            raise NotFoundError()
        return [self.name]


def test_composite_source_provides_the_union_or_the_wildcard() -> None:
    typed = CompositeDataSource([Users([]), Named("t", {str})])
    assert typed.provides == {User, Team, str}
    wild = CompositeDataSource([Users([]), Anything()])
    assert wild.provides is TYPE_WILDCARD and TYPE_WILDCARD in wild.provides


def test_composite_source_asks_its_sources_in_order_and_skips_not_found() -> None:
    first, second, third = Named("a", {str}, found=False), Named("b", {str}), Named("c", {str})
    composite = CompositeDataSource([first, second, third])
    assert composite.get(str, {}) == "b"
    assert composite.get_many(str, {}) == ["b"]
    assert (first.asked, second.asked, third.asked) == (2, 2, 0)


def test_composite_source_keeps_order_when_a_wildcard_comes_first() -> None:
    cache, api = Named("cache", TYPE_WILDCARD), Named("api", {str})
    assert CompositeDataSource([cache, api]).get(str, {}) == "cache"
    assert api.asked == 0


def test_composite_source_skips_sources_that_lack_the_type() -> None:
    ints, strs = Named("ints", {int}), Named("strs", {str})
    assert CompositeDataSource([ints, strs]).get(str, {}) == "strs"
    assert ints.asked == 0


def test_composite_source_not_found_and_unsupported() -> None:
    composite = CompositeDataSource([Named("a", {str}, found=False)])
    with pytest.raises(NotFoundError, match="str"):
        composite.get(str, {"k": 1})
    with pytest.raises(NotFoundError):
        composite.get_many(str, {"k": 1})
    with pytest.raises(UnsupportedError, match="int"):
        composite.get(int, {})


def test_composite_sink_accepts_the_union_and_feeds_every_sink_that_accepts() -> None:
    users, everything = UserSink(), EverythingSink()
    composite = CompositeDataSink([users])
    assert composite.accepts == {User}
    with pytest.raises(UnsupportedError, match="Team"):
        composite.put(Team, Team())
    both = CompositeDataSink([users, everything])
    assert both.accepts is TYPE_WILDCARD
    ann = User("ann")
    both.put(User, ann)
    both.put(Team, team := Team())
    both.put_many(User, (u for u in [ann, ann]))
    assert users.items == [("put", ann, None), ("put_many", [ann, ann], None)]
    assert everything.items == [(User, ann), (Team, team), (User, ann), (User, ann)]


# -- composite internals, as 1.x lays them out (Cassiopeia and its plugins read them) ------


def test_composite_source_maps_each_type_to_its_sources_in_order() -> None:
    users, strs, more_strs, anything = Users([]), Named("s", {str}), Named("s2", {str}), Anything()
    composite = CompositeDataSource([users, strs, anything, more_strs])
    assert composite._sources == {
        User: [users],
        Team: [users],
        str: [strs, more_strs],
        TYPE_WILDCARD: [anything],
    }
    # Cassiopeia's RiotAPI.set_api_key and Kernel.set_server_url_and_port walk it like this:
    reached = {id(source) for sources in composite._sources.values() for source in sources}
    assert reached == {id(users), id(strs), id(more_strs), id(anything)}


def test_composite_sink_maps_each_type_to_the_set_of_its_sinks() -> None:
    users, other_users, everything = UserSink(), UserSink(), EverythingSink()
    composite = CompositeDataSink([users, other_users, everything, users])
    assert composite._sinks == {User: {users, other_users}, TYPE_WILDCARD: {everything}}
    assert all(isinstance(sinks, set) for sinks in composite._sinks.values())
    # A sink given twice is still one sink, as in a 1.x set: it gets each item once.
    ann = User("ann")
    composite.put(User, ann)
    assert users.items == [("put", ann, None)] and other_users.items == [("put", ann, None)]
    assert everything.items == [(User, ann)]


def test_composite_source_hands_each_source_its_own_copy_of_the_query() -> None:
    class Defaulting(Named):
        def get(self, type: Any, query: Any, context: Any = None) -> Any:
            query["region"] = self.name  # what a validate_query default or pre-transform does
            query["seen"].append(self.name)
            return super().get(type, query, context)

    first, second = Defaulting("first", {str}, found=False), Defaulting("second", {str})
    query = {"name": "x", "seen": []}
    assert CompositeDataSource([first, second]).get(str, query) == "second"
    assert query == {"name": "x", "seen": []}
